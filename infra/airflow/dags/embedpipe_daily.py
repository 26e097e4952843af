"""Daily incremental indexing on a Ray cluster: the day's new Parquet partition into the LanceDB table.

    <source_root>/date=<ds>/*.parquet
      -> index     Ray job: python -m jobs.index --config <config> --set source.path=<source_root>/date=<ds>/
                            --set sink.mode=upsert --set run.id=daily-<ds>
      -> maintain  Ray job: python -m jobs.maintain --config <config>   (index upkeep, compaction and
                            pruning by sink.keep_versions, duplicate-id check)
      -> record    the run record: XCom, and <records_dir>/<dag_id>/<ds>.json

Safe to retry and to re-run: the run id is the data interval's (``daily-<ds>``), so an attempt after
a failure resumes the job's checkpoints and a re-run of a finished date reads nothing again; an
attempt whose Ray job is still running (the Airflow worker died) follows that job instead of
starting a second one. Upserts replace documents by id, so dates run in order (``depends_on_past``,
one run at a time): a later day's version of a document must win.

Configure with DAG params (defaults from the environment of the DAG processor; override per run with
``--conf``/the trigger form) and one Airflow connection to the cluster:

    AIRFLOW_CONN_EMBEDPIPE_RAY='{"conn_type": "generic", "extra": {"address": "http://head:8265"},
                                  "password": "<ray get-auth-token on the head>"}'

A job that fails makes its task fail with the job's own error line in the task log (the whole job
output is streamed there too); exit code 2 (bad config or input, e.g. no partition for the date)
fails without retrying, since a retry cannot fix it.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional, Sequence

import embedpipe_ray
import pendulum
from airflow.sdk import DAG, BaseHook, BaseOperator, Param, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

DAG_ID = "embedpipe_daily"
_HERE = Path(__file__).resolve()
# This file inside a checkout (infra/airflow/dags/): ship that checkout; otherwise say where one is.
_CHECKOUT = str(_HERE.parents[3]) if (_HERE.parents[3] / "jobs" / "index.py").exists() else ""


class EmbedpipeRayJobOperator(BaseOperator):
    """Run one embedpipe job (``python -m jobs.<job> ...``) on a Ray cluster and return its summary.

    ``job_args`` come after a ``--set`` for each of the run's ``params.overrides``. The summary is
    the job's ``--summary-json -`` line; it is the task's XCom (with the Ray job id).
    """

    template_fields: Sequence[str] = ("job_args", "run_key", "working_dir", "runtime_env_file")
    ui_color = "#e8f1fa"

    def __init__(
        self,
        *,
        job: str,
        job_args: Sequence[str],
        run_key: str,
        ray_conn_id: str = "embedpipe_ray",
        working_dir: str = "{{ params.working_dir }}",
        runtime_env_file: str = "{{ params.runtime_env }}",
        poll_seconds: Optional[float] = None,
        job_timeout: Optional[timedelta] = timedelta(hours=6),
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job, self.job_args, self.run_key = job, list(job_args), run_key
        self.ray_conn_id, self.working_dir, self.runtime_env_file = ray_conn_id, working_dir, runtime_env_file
        self.poll_seconds, self.job_timeout = poll_seconds, job_timeout
        self._client, self._job_id = None, None

    def _log_line(self, line: str) -> None:
        self.log.info("%s", line)  # a job's line is data, never a format string

    def _connect(self):
        conn = BaseHook.get_connection(self.ray_conn_id)
        extra = conn.extra_dejson or {}
        address = extra.get("address") or (f"http://{conn.host}:{conn.port or 8265}" if conn.host else None)
        if not address:
            raise AirflowFailException(f"connection {self.ray_conn_id!r} has no extra.address (http://head:8265)")
        return embedpipe_ray.connect(address, token=conn.password or None)

    def execute(self, context) -> dict:
        if not self.working_dir or not Path(self.working_dir, "jobs", f"{self.job}.py").exists():
            raise AirflowFailException(
                f"params.working_dir={self.working_dir!r} is not an embedpipe checkout "
                f"(no jobs/{self.job}.py); set it or EMBEDPIPE_CHECKOUT"
            )
        self._client = self._connect()
        env = embedpipe_ray.runtime_env(self.working_dir, self.runtime_env_file or None)
        # params.overrides go first: a later --set wins, so the task's own (source.path, sink.mode, run.id) hold.
        overrides = [x for o in context["params"].get("overrides") or [] for x in ("--set", str(o))]
        entrypoint = ["python", "-m", f"jobs.{self.job}", *overrides, *self.job_args, "--summary-json", "-"]
        self._job_id, attached = embedpipe_ray.submit_or_attach(
            self._client, self.run_key, entrypoint, env, log=self._log_line
        )
        timeout = self.job_timeout.total_seconds() if self.job_timeout else None
        try:
            result = embedpipe_ray.wait(
                self._client,
                self._job_id,
                attached=attached,
                log=self._log_line,
                poll_seconds=self.poll_seconds or float(context["params"].get("poll_seconds") or 5),
                timeout_seconds=timeout,
            )
        except embedpipe_ray.JobFailed as exc:
            self.log.error("%s", exc)
            if exc.exit_code == 2:  # config or input error found before any work: retrying cannot help
                raise AirflowFailException(str(exc)) from None
            raise AirflowException(str(exc)) from None
        if result.summary is None:
            raise AirflowException(f"Ray job {result.job_id} succeeded but printed no JSON summary")
        self.log.info("Ray job %s %s in %.0fs", result.job_id, result.status, result.seconds)
        return result.to_dict()

    def on_kill(self) -> None:
        """The task was stopped (marked failed, timed out): stop its Ray job too."""
        if self._client is not None and self._job_id is not None:
            self._client.stop_job(self._job_id)


def _param_default(name: str, default: Any) -> Any:
    return os.environ.get(f"EMBEDPIPE_{name.upper()}", default)


with DAG(
    dag_id=DAG_ID,
    description="Embed each day's new Parquet partition into the LanceDB table on a Ray cluster",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "depends_on_past": True},
    params={
        "source_root": Param(
            _param_default("source_root", "s3://corpora/wiki"),
            type="string",
            description="Prefix holding the date=YYYY-MM-DD/ partitions.",
        ),
        "config": Param(
            _param_default("config", "jobs/configs/s3_production.yaml"),
            type="string",
            description="Job config, relative to working_dir (sink, model, index, storage).",
        ),
        "overrides": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Extra --set key=value for both jobs, e.g. sink.table=wiki.",
        ),
        "working_dir": Param(
            _param_default("checkout", _CHECKOUT),
            type="string",
            description="embedpipe checkout on this worker, shipped as the job's working_dir.",
        ),
        "runtime_env": Param(
            _param_default("runtime_env", "infra/ray/runtime_env.yaml"),
            type="string",
            description="Runtime env YAML (pip packages) relative to working_dir; '' when "
            "the cluster's image has the dependencies.",
        ),
        "run_id_suffix": Param(
            "",
            type="string",
            pattern=r"^[A-Za-z0-9_.\-]*$",
            description="Appended to daily-<ds>: a new suffix re-reads the partition's "
            "files (upsert still skips unchanged documents).",
        ),
        "poll_seconds": Param(
            5,
            type="number",
            exclusiveMinimum=0,
            description="Seconds between looks at each Ray job's status and log while it runs.",
        ),
        "records_dir": Param(
            _param_default("records_dir", ""),
            type="string",
            description="Where run records are written; default $AIRFLOW_HOME/embedpipe-runs.",
        ),
    },
    tags=["embedpipe", "ray"],
    doc_md=__doc__,
) as dag:
    run_key = "daily-{{ ds }}{{ params.run_id_suffix }}"
    common = ["--config", "{{ params.config }}"]

    index = EmbedpipeRayJobOperator(
        task_id="index",
        job="index",
        run_key=run_key,
        job_args=[
            *common,
            "--set",
            "source.path={{ params.source_root }}/date={{ ds }}/",
            "--set",
            "sink.mode=upsert",
            "--set",
            f"run.id={run_key}",
        ],
    )
    maintain = EmbedpipeRayJobOperator(
        task_id="maintain",
        job="maintain",
        run_key=f"maintain-{run_key}",
        job_args=common,
        depends_on_past=False,
    )

    @task(depends_on_past=False)
    def record(index_result: dict, maintain_result: dict, **context) -> dict:
        """One JSON record per run: what was embedded, skipped, rejected, and the index afterwards."""
        record = {
            "dag_id": context["dag"].dag_id,
            "ds": context["ds"],
            "dag_run_id": context["run_id"],
            "run_id": (index_result.get("summary") or {}).get("run_id"),
            "index_job": index_result,
            "maintain_job": maintain_result,
        }
        root = context["params"]["records_dir"] or os.path.join(
            os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "embedpipe-runs"
        )
        path = Path(root) / record["dag_id"] / f"{context['ds']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)  # a reader never sees half a record
        summary = index_result.get("summary") or {}
        print(
            f"run record {path}: read={summary.get('rows_read')} embedded={summary.get('rows_written')} "
            f"unchanged={summary.get('skipped')} rejected={summary.get('rows_rejected')} "
            f"table_rows={summary.get('table_rows')} index_after={maintain_result.get('summary', {}).get('after')}"
        )
        return record

    index >> maintain  # upkeep and checks see the table the index job left
    record(index.output, maintain.output)
