"""The daily Airflow DAG, run by a real Airflow (`airflow dags test`) against a real Ray head.

Airflow lives in its own virtual environment (.venv-airflow, built by scripts/test_airflow.sh, which
runs this file and points EMBEDPIPE_AIRFLOW_VENV at it); without that variable these tests are skipped.
The DAG's tasks submit jobs to a head this
module starts on 127.0.0.1 (tests/helpers/ray_head.py), with the cluster's token in the Airflow connection.

Two days of partitions: day one has 30 documents; day two adds 10 and revises 5 of day one's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from helpers.ray_head import LocalRayHead

ROOT = Path(__file__).resolve().parents[2]
# Set by scripts/test_airflow.sh, which builds the venv; the main suite (scripts/test.sh) skips this file.
VENV = Path(os.environ.get("EMBEDPIPE_AIRFLOW_VENV") or "/nonexistent")
AIRFLOW = VENV / "bin" / "airflow"
DAG_ID = "embedpipe_daily"
DAY1, DAY2, NO_DATA_DAY = "2026-11-27", "2026-11-28", "2026-11-29"

pytestmark = pytest.mark.skipif(not AIRFLOW.exists(), reason="Airflow has its own venv: run scripts/test_airflow.sh")


@pytest.fixture(scope="module")
def head():
    h = LocalRayHead(num_cpus=2)
    yield h
    h.stop()
    assert h.leftovers() == []


@pytest.fixture(scope="module")
def source(sample_table, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("partitions")
    docs = sample_table.select(["id", "title", "text", "length_chars"])
    day1 = docs.slice(0, 30)
    revised = docs.slice(0, 5)
    revised = revised.set_column(
        revised.schema.get_field_index("text"),
        "text",
        pc.binary_join_element_wise(revised.column("text"), " (revised)", ""),
    )
    day2 = pa.concat_tables([docs.slice(30, 10), revised.cast(docs.schema)])
    for day, table in ((DAY1, day1), (DAY2, day2)):
        (root / f"date={day}").mkdir()
        pq.write_table(table, root / f"date={day}" / "part-0.parquet")
    return root


@pytest.fixture(scope="module")
def airflow(head, source, tmp_path_factory):
    """An Airflow home (SQLite) with the DAG folder and a connection to the head; returns a runner."""
    home = tmp_path_factory.mktemp("airflow-home")
    db = tmp_path_factory.mktemp("daily-db")
    token = head.auth_headers().get("Authorization", "").removeprefix("Bearer ")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "RAY_AUTH", "RAY_ADDRESS", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "infra" / "airflow" / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_CONN_EMBEDPIPE_RAY": json.dumps(
                {"conn_type": "generic", "extra": {"address": head.address}, "password": token}
            ),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
    )
    migrate = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    conf = {
        "source_root": str(source),
        "config": "jobs/configs/demo.yaml",
        "overrides": [
            f"sink.uri={db}",
            "sink.table=daily",
            "source.metadata_columns=[title, length_chars, date]",
            "compute.block_rows=16",
        ],
        "poll_seconds": 0.5,  # each dags test runs two jobs of a few seconds: 5 s between looks wastes ~5 s
    }

    def run(day: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(AIRFLOW), "dags", "test", DAG_ID, day, "--conf", json.dumps(conf)],
            env=env,
            cwd=home,
            capture_output=True,
            text=True,
            timeout=900,
        )

    run.home, run.db = home, db
    return run


def _record(airflow, day: str) -> dict:
    return json.loads((airflow.home / "embedpipe-runs" / DAG_ID / f"{day}.json").read_text())


def _table(airflow) -> pa.Table:
    import lancedb

    return lancedb.connect(str(airflow.db)).open_table("daily").to_arrow()


def test_first_day_is_indexed_and_recorded(airflow, source):
    done = airflow(DAY1)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    record = _record(airflow, DAY1)
    summary = record["index_job"]["summary"]
    assert record["run_id"] == summary["run_id"] == f"daily-{DAY1}"
    assert (summary["rows_read"], summary["rows_written"], summary["table_rows"]) == (30, 30, 30)
    assert record["index_job"]["status"] == "SUCCEEDED" and not record["index_job"]["attached"]
    maintenance = record["maintain_job"]["summary"]
    assert maintenance["duplicate_ids"] == 0 and maintenance["rows"] == 30
    table = _table(airflow)
    assert sorted(table.column("id").to_pylist()) == sorted(
        pq.read_table(source / f"date={DAY1}").column("id").to_pylist()
    )
    assert set(table.column("date").to_pylist()) == {DAY1}  # the partition value became a column
    assert "embedded     30" in out  # the job's own output is in the task log
    assert out.index("submitted Ray job daily-") < out.index("submitted Ray job maintain-")


def test_rerun_of_the_same_day_writes_nothing_twice(airflow):
    before = _table(airflow)
    done = airflow(DAY1)
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
    summary = _record(airflow, DAY1)["index_job"]["summary"]
    assert summary["rows_read"] == 0 and summary["rows_written"] == 0  # run id daily-<ds> had finished
    after = _table(airflow)
    assert after.num_rows == 30 and len(set(after.column("id").to_pylist())) == 30
    assert sorted(after.column("content_hash").to_pylist()) == sorted(before.column("content_hash").to_pylist())


def test_next_day_adds_new_and_replaces_revised_documents(airflow, source):
    done = airflow(DAY2)
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
    record = _record(airflow, DAY2)
    summary = record["index_job"]["summary"]
    assert (summary["rows_read"], summary["rows_written"], summary["table_rows"]) == (15, 15, 40)
    assert record["maintain_job"]["summary"]["duplicate_ids"] == 0
    table = _table(airflow).to_pylist()
    assert len(table) == 40 and len({r["id"] for r in table}) == 40
    revised_ids = set(pq.read_table(source / f"date={DAY2}").column("id").to_pylist()[10:])
    for row in table:
        assert row["text"].endswith(" (revised)") == (row["id"] in revised_ids)
        assert row["date"] == (DAY2 if row["run_id"] == f"daily-{DAY2}" else DAY1)
    assert sum(r["run_id"] == f"daily-{DAY2}" for r in table) == 15


def test_a_failing_job_fails_the_task_with_its_error_in_the_log(airflow):
    done = airflow(NO_DATA_DAY)  # no date=2026-11-29/ partition: the job stops in its preflight
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "error: source.path=" in out and f"date={NO_DATA_DAY}" in out, out[-8000:]
    assert "FAILED (exit code 2)" in out
    assert "submitted Ray job maintain-" not in out  # upkeep waits for a successful index job
    assert not (airflow.home / "embedpipe-runs" / DAG_ID / f"{NO_DATA_DAY}.json").exists()
    assert _table(airflow).num_rows == 40
