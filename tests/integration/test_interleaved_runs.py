"""Correct runs interleaved in orders that broke the table (issue 29): a job that waited for the lease,
housekeeping between a killed run and its resume, an upsert whose metadata changed.

Real local Ray, real Lance/LanceDB tables, the tiny random BERT; a killed run is a real driver killed
by pid (tests/integration/test_safe_writes.py's helpers).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from test_safe_writes import _cfg, _corpus, _rows

from connectors.table_lease import TableLease
from pipelines.run.runner import run_index

EIGHT_DAYS_S = 8 * 24 * 3600


# -- 1. a job that waited for the lease checks the table as it is when it gets the lease -----------------


class _Said(logging.Handler):
    """The runner's log lines, to see when a job is waiting for the lease."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _run_while_another_job_holds_the_lease(db: Path, made_meanwhile: Path, cfg) -> object:
    """Start ``cfg`` (on_busy=wait) while the test holds the table's lease; once it waits, put the table
    ``made_meanwhile`` in place (what another job committed while it waited), release the lease, and
    return what the waiting job returned or raised."""
    logger = logging.getLogger("pipelines.run.runner")
    said, level = _Said(), logger.level
    logger.addHandler(said)
    logger.setLevel(logging.INFO)
    holder = TableLease(str(db), "docs", "other-job", timeout_s=600).acquire()
    out: dict = {}

    def job():
        try:
            out["result"] = run_index(cfg)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out["result"] = exc

    thread = threading.Thread(target=job)
    try:
        thread.start()
        deadline = time.time() + 120
        while not any("waiting for run other-job" in line for line in said.lines):
            assert time.time() < deadline and thread.is_alive(), f"the job did not wait: {said.lines}"
            time.sleep(0.1)
        shutil.copytree(made_meanwhile / "docs.lance", db / "docs.lance")
    finally:
        holder.release()
        thread.join(timeout=300)
        logger.removeHandler(said)
        logger.setLevel(level)
    assert not thread.is_alive()
    return out["result"]


def test_a_create_that_waited_for_the_lease_does_not_replace_the_table_made_meanwhile(
    ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    from connectors.lance_sink import SinkError

    a = _corpus(tmp_path / "a", sample_table, 2000, 1, 12)
    b = _corpus(tmp_path / "b", sample_table, 2100, 1, 12)
    elsewhere, db = tmp_path / "elsewhere", tmp_path / "db"
    run_index(_cfg(a, elsewhere, tiny_bert_dir, "sink.mode=create"))
    a_ids = sorted(r["id"] for r in _rows(elsewhere))

    got = _run_while_another_job_holds_the_lease(
        db, elsewhere, _cfg(b, db, tiny_bert_dir, "sink.mode=create", "sink.on_busy=wait")
    )
    assert isinstance(got, SinkError) and "already exists" in str(got), got
    assert sorted(r["id"] for r in _rows(db)) == a_ids  # A's table, untouched


def test_an_append_that_waited_for_the_lease_checks_the_lineage_of_the_table_made_meanwhile(
    ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    from pipelines.lineage import LineageMismatchError

    a = _corpus(tmp_path / "a", sample_table, 2200, 1, 12)
    c = _corpus(tmp_path / "c", sample_table, 2300, 1, 12)
    elsewhere, db = tmp_path / "elsewhere", tmp_path / "db"
    run_index(_cfg(a, elsewhere, tiny_bert_dir, "sink.mode=create"))
    got = _run_while_another_job_holds_the_lease(
        db,
        elsewhere,
        _cfg(c, db, tiny_bert_dir, "sink.mode=append", "sink.on_busy=wait", "model.document_prompt=passage: "),
    )
    assert isinstance(got, LineageMismatchError) and "document_prompt" in str(got), got
    assert len(_rows(db)) == 12  # nothing of another embedding space was appended
