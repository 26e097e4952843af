"""Submit an embedpipe job to a Ray cluster, follow it, and read its result: the Ray half of the DAG.

No Airflow import here, so the same functions run (and are tested) outside Airflow; the operator in
``embedpipe_daily.py`` is a thin shell around them. Only ``ray`` (its job submission client) is
needed on the Airflow worker; the pipeline's own dependencies live on the cluster.

Retries never run a job twice at once: every job carries its run key (``daily-2026-11-28``) in its
Ray metadata, and a new attempt first looks for a job of that key that is still pending or running
and follows it instead of submitting another (an Airflow worker that died leaves its Ray job
running). A finished or failed job is not reused; the next submission of the same run id resumes
through the job's own checkpoints (``run.id``), so it never writes a row twice.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = [
    "ACTIVE",
    "JobFailed",
    "JobResult",
    "connect",
    "job_error",
    "runtime_env",
    "submit_or_attach",
    "summary_from_logs",
    "wait",
]

ACTIVE = ("PENDING", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RUN_KEY = "embedpipe_run"  # Ray job metadata key holding the run key


class JobFailed(RuntimeError):
    """The Ray job ended in FAILED or STOPPED; ``exit_code`` 2 means bad config or input (no retry helps)."""

    def __init__(self, message: str, exit_code: Optional[int]):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class JobResult:
    job_id: str
    status: str
    attached: bool  # followed a job an earlier attempt had submitted
    seconds: float
    summary: Optional[dict] = None  # the job's --summary-json - line
    log_tail: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "status": self.status,
            "attached": self.attached,
            "seconds": round(self.seconds, 1),
            "summary": self.summary,
        }


def connect(address: str, token: Optional[str] = None):
    """A job client for the dashboard at ``address`` (``http://head:8265``).

    ``token``: the cluster's auth token (``ray get-auth-token`` on the head). Without it Ray's
    client uses ``RAY_AUTH_TOKEN`` / ``~/.ray/auth_token`` when ``RAY_AUTH_MODE=token``.
    """
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(address, headers=headers)


def runtime_env(working_dir: str, env_file: Optional[str] = None) -> dict:
    """The job's runtime environment: ``working_dir`` shipped to the cluster, plus an optional YAML
    file (``infra/ray/runtime_env.yaml``: the pip packages the job needs beyond Ray), relative to it."""
    import yaml

    env: dict = {}
    if env_file:
        path = Path(env_file) if Path(env_file).is_absolute() else Path(working_dir) / env_file
        env = yaml.safe_load(path.read_text()) or {}
        if not isinstance(env, dict):
            raise ValueError(f"{path}: a runtime environment is a mapping (pip, env_vars, ...)")
    env["working_dir"] = str(working_dir)
    return env


def submit_or_attach(
    client, run_key: str, entrypoint: Sequence[str], env: dict, log: Callable[[str], None] = print
) -> tuple[str, bool]:
    """Follow a pending/running job of ``run_key`` if there is one, else submit a new job.

    Returns:
        (submission id, attached)
    """
    for job in client.list_jobs():
        if (job.metadata or {}).get(RUN_KEY) == run_key and str(job.status.value) in ACTIVE:
            log(
                f"following Ray job {job.submission_id} ({job.status.value}): an earlier attempt of "
                f"{run_key} submitted it and it is still running"
            )
            return job.submission_id, True
    job_id = f"{run_key}-{uuid.uuid4().hex[:8]}"  # submission ids are unique for the cluster's lifetime
    client.submit_job(
        entrypoint=shlex.join(entrypoint), submission_id=job_id, runtime_env=env, metadata={RUN_KEY: run_key}
    )
    log(f"submitted Ray job {job_id}: {shlex.join(entrypoint)}")
    return job_id, False


def summary_from_logs(logs: str) -> Optional[dict]:
    """The last JSON object line of the job's output (``--summary-json -``), or None."""
    for line in reversed(logs.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def job_error(logs: str, message: str = "") -> str:
    """The job's own error line (the jobs print ``error: ...`` on failure), else Ray's message."""
    for line in reversed(logs.splitlines()):
        if line.startswith("error:"):
            return line.strip()
    return (message or "no error line in the job's output").strip().splitlines()[0]


def wait(
    client,
    job_id: str,
    *,
    attached: bool = False,
    log: Callable[[str], None] = print,
    poll_seconds: float = 5,
    timeout_seconds: Optional[float] = None,
) -> JobResult:
    """Follow ``job_id`` to the end, passing each new line of its output to ``log``.

    Raises:
        JobFailed: the job failed or was stopped (the message carries its error line), or it ran past
            ``timeout_seconds`` (it is stopped first).
    """
    started = time.monotonic()
    printed = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        logs = client.get_job_logs(job_id)
        # Whole lines only while the job runs (the rest of a half-written line comes next time).
        upto = len(logs) if status in TERMINAL else logs.rfind("\n", printed) + 1
        for line in logs[printed : max(upto, printed)].splitlines():
            log(line)
        printed = max(upto, printed)
        if status in TERMINAL:
            break
        if timeout_seconds is not None and time.monotonic() - started > timeout_seconds:
            client.stop_job(job_id)
            raise JobFailed(
                f"Ray job {job_id} ran past {timeout_seconds:.0f}s and was stopped; "
                "started again with the same run id it resumes",
                None,
            )
        time.sleep(poll_seconds)
    info = client.get_job_info(job_id)
    result = JobResult(
        job_id, status, attached, time.monotonic() - started, summary_from_logs(logs), logs.splitlines()[-20:]
    )
    if status != "SUCCEEDED":
        code = getattr(info, "driver_exit_code", None)
        raise JobFailed(
            f"Ray job {job_id} {status}"
            + (f" (exit code {code})" if code is not None else "")
            + f": {job_error(logs, info.message or '')}",
            code,
        )
    return result
