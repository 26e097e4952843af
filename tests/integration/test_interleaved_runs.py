"""Correct runs interleaved in orders that broke the table (issue 29): a job that waited for the lease,
housekeeping between a killed run and its resume, an upsert whose metadata changed.

Real local Ray, real Lance/LanceDB tables, the tiny random BERT; a killed run is a real driver killed
by pid (tests/integration/test_safe_writes.py's helpers).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_safe_writes import (
    _cfg,
    _corpus,
    _env,
    _job,
    _job_args,
    _kill_mid_run,
    _rows,
    _runlog,
    _write,
    staging_checkpointer,
    stats_row,
)

from connectors.lance.lease import TableLease
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


def _run_while_another_job_holds_the_lease(db: Path, made_meanwhile: Path, job, logger="pipelines.run.runner"):
    """Start ``job()`` (a job with on_busy=wait) while the test holds the table's lease; once it waits,
    put the table ``made_meanwhile`` in place (what another job committed while it waited), release the
    lease, and return what the waiting job returned or raised."""
    logger = logging.getLogger(logger)
    said, level = _Said(), logger.level
    logger.addHandler(said)
    logger.setLevel(logging.INFO)
    holder = TableLease(str(db), "docs", "other-job", timeout_s=600).acquire()
    out: dict = {}

    def run():
        try:
            out["result"] = job()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out["result"] = exc

    thread = threading.Thread(target=run)
    try:
        thread.start()
        deadline = time.time() + 120
        while not any("waiting for run other-job" in line for line in said.lines):
            assert time.time() < deadline and thread.is_alive(), f"the job did not wait: {said.lines}"
            time.sleep(0.1)
        shutil.rmtree(db / "docs.lance", ignore_errors=True)
        shutil.copytree(made_meanwhile / "docs.lance", db / "docs.lance")
    finally:
        holder.release()
        thread.join(timeout=300)
        logger.removeHandler(said)
        logger.setLevel(level)
    assert not thread.is_alive()
    return out["result"]


@pytest.fixture(scope="module")
def made_meanwhile(ray_cluster, sample_table, tiny_bert_dir, tmp_path_factory) -> Path:
    """Table A (12 documents, the tiny model, no prompt), made once: what another job committed while
    a job waited for the lease. The tests below only read it (the helper copies it into place; the
    maintenance test maintains a copy)."""
    a = _corpus(tmp_path_factory.mktemp("a"), sample_table, 2000, 1, 12)
    elsewhere = tmp_path_factory.mktemp("made-meanwhile")
    run_index(_cfg(a, elsewhere, tiny_bert_dir, "sink.mode=create"))
    return elsewhere


def test_a_create_that_waited_for_the_lease_does_not_replace_the_table_made_meanwhile(
    made_meanwhile, sample_table, tiny_bert_dir, tmp_path
):
    from connectors.lance.table import SinkError

    b = _corpus(tmp_path / "b", sample_table, 2100, 1, 12)
    elsewhere, db = made_meanwhile, tmp_path / "db"
    a_ids = sorted(r["id"] for r in _rows(elsewhere))

    cfg = _cfg(b, db, tiny_bert_dir, "sink.mode=create", "sink.on_busy=wait")
    got = _run_while_another_job_holds_the_lease(db, elsewhere, lambda: run_index(cfg))
    assert isinstance(got, SinkError) and "already exists" in str(got), got
    assert sorted(r["id"] for r in _rows(db)) == a_ids  # A's table, untouched


def test_an_append_that_waited_for_the_lease_checks_the_lineage_of_the_table_made_meanwhile(
    made_meanwhile, sample_table, tiny_bert_dir, tmp_path
):
    from pipelines.lineage import LineageMismatchError

    c = _corpus(tmp_path / "c", sample_table, 2300, 1, 12)
    elsewhere, db = made_meanwhile, tmp_path / "db"
    cfg = _cfg(c, db, tiny_bert_dir, "sink.mode=append", "sink.on_busy=wait", "model.document_prompt=passage: ")
    got = _run_while_another_job_holds_the_lease(db, elsewhere, lambda: run_index(cfg))
    assert isinstance(got, LineageMismatchError) and "document_prompt" in str(got), got
    assert len(_rows(db)) == 12  # nothing of another embedding space was appended


def test_maintenance_that_waited_for_the_lease_keeps_the_lineage_of_the_table_made_meanwhile(
    made_meanwhile, sample_table, tiny_bert_dir, tmp_path
):
    """An index build writes the lineage back: one read before the wait was another model's. The table
    maintained is a copy of ``made_meanwhile`` (no prompt); the one made meanwhile has a prompt."""
    from connectors.lance.metadata import read_lineage
    from pipelines.maintenance import run_maintenance

    a = _corpus(tmp_path / "a", sample_table, 2700, 1, 12)
    elsewhere, db = tmp_path / "elsewhere", Path(shutil.copytree(made_meanwhile, tmp_path / "db"))
    assert read_lineage(str(db), "docs")["model"]["document_prompt"] in (None, "")
    run_index(_cfg(a, elsewhere, tiny_bert_dir, "model.document_prompt=passage: "))
    index = ["index.type=ivf_sq", "index.min_rows=1", "index.num_partitions=2", "index.target_recall=null"]
    cfg = _cfg(a, db, tiny_bert_dir, "sink.on_busy=wait", *index)
    got = _run_while_another_job_holds_the_lease(
        db, elsewhere, lambda: run_maintenance(cfg), logger="pipelines.maintenance"
    )
    assert got.action == "built", got
    lineage = read_lineage(str(db), "docs")
    assert lineage["model"]["document_prompt"] == "passage: " and lineage["index"]["type"] == "ivf_sq"


# -- 2. housekeeping between a stopped run and its resume ------------------------------------------------


def _age(paths, seconds: float) -> None:
    then = time.time() - seconds
    for p in paths:
        os.utime(p, (then, then))


def test_housekeeping_between_a_killed_overwrite_and_its_resume_loses_nothing(
    made_meanwhile, ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    """The overwrite's staged files are older than Lance's 7 days for unreferenced files when
    jobs.maintain prunes: they are removed, and the resume must embed those files again instead of
    committing a version whose data files do not exist. One of those files was also removed from the
    source meanwhile: it cannot be redone and must not be published (every resume failed with
    MissingFilesError, publishing its old record again). The table overwritten is a copy of
    ``made_meanwhile`` (12 other documents), not a job run of its own."""
    from pipelines.maintenance import run_maintenance

    new = _corpus(tmp_path / "new", sample_table, 2500, 8, 8)
    env = _env(ray_cluster)
    for attempt in range(3):
        db = Path(shutil.copytree(made_meanwhile, tmp_path / f"db{attempt}"))
        proc = _job(_job_args(new, db, tiny_bert_dir, "run.id=killed"), env)
        if _kill_mid_run(proc, db, 2, 8, "killed"):
            break
    else:
        pytest.fail("in three tries the overwrite finished before a kill landed mid-run")
    done = _runlog(db).done_files("killed", with_fragments=True)
    staged = [f.path for d in done.values() for x in d.fragments for f in x.files]
    assert staged and len(done) >= 2
    removed = Path(sorted(done)[0])
    removed.unlink()  # gone from the source as well as (below) its staged data
    # Eight days later: every file of the tables is older than the retention and Lance's 7 days.
    _age(
        [p for t in ("docs", "docs_rejects", "docs_runs") for p in (db / f"{t}.lance").rglob("*") if p.is_file()],
        EIGHT_DAYS_S,
    )
    run_maintenance(_cfg(new, db, tiny_bert_dir))  # sink.keep_versions: 7d (the default)
    assert not any((db / "docs.lance" / "data" / p).exists() for p in staged)  # the premise: pruned

    resumed = run_index(_cfg(new, db, tiny_bert_dir, "run.id=killed"))
    want = sorted(pq.read_table(new).column("id").to_pylist())  # the files left in the source
    assert len(want) == 7 * 8 and str(removed) not in {r["source_file"] for r in _rows(db)}
    rows = _rows(db)
    assert sorted(r["id"] for r in rows) == want, resumed.format()
    assert lance.dataset(str(db / "docs.lance")).to_table().num_rows == len(want)  # every data file is there
    assert resumed.rows_written == len(want)  # the files staged before the kill were embedded again


def test_the_index_step_optimizes_without_pruning_what_a_stopped_run_staged(tmp_path):
    """LanceDB's table.optimize() prunes unreferenced files older than 7 days; the index upkeep of
    append/upsert runs must compact and optimise the indices without that."""
    import lancedb
    import numpy as np
    from lance.fragment import write_fragments
    from lancedb.index import IvfPq

    from connectors.lance.index import index_row_counts, optimize_index

    vectors = np.random.default_rng(0).random((600, 16), dtype=np.float32)
    rows = pa.table(
        {"id": [str(i) for i in range(600)], "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 16)}
    )
    table = lancedb.connect(str(tmp_path)).create_table("t", rows)
    table.create_index("vector", config=IvfPq(num_partitions=2, num_sub_vectors=2))
    table.add(rows.slice(0, 10))
    table.add(rows.slice(10, 10))
    staged = write_fragments(rows.slice(0, 5), table.to_lance().uri, schema=rows.schema)  # a stopped run's
    path = tmp_path / "t.lance" / "data" / staged[0].files[0].path
    _age([path], EIGHT_DAYS_S)

    optimize_index(table)
    assert path.exists()
    assert index_row_counts(table) == (620, 0)  # the new rows went into the index
    assert len(table.to_lance().get_fragments()) == 2  # and the two small appends compacted into one


def test_a_commit_never_references_a_data_file_that_is_gone(tmp_path):
    from lance.fragment import write_fragments

    from connectors.lance.commits import MissingFilesError, missing_files, require_files

    uri = str(tmp_path / "t.lance")
    schema = pa.schema([("id", pa.string())])
    lance.write_dataset(pa.table({"id": ["a"]}, schema=schema), uri)
    fragments = write_fragments(pa.table({"id": ["b", "c"]}, schema=schema), uri, schema=schema)
    assert missing_files(uri, fragments) == []
    (tmp_path / "t.lance" / "data" / fragments[0].files[0].path).unlink()
    with pytest.raises(MissingFilesError, match="1 data file"):
        require_files(uri, fragments, "the table")


# -- 4. an upsert whose source changed only metadata ------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["rows", "chunks"])
def test_an_upsert_that_changed_only_metadata_rewrites_those_rows_without_embedding_them(
    chunked, ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    # ``scores``: a list-valued column holding NaN, which every upsert used to rewrite ([nan] != [nan]).
    docs = [
        {"id": r["id"], "text": r["text"][:400], "title": r["title"], "scores": [float("nan"), float(k)]}
        for k, r in enumerate(sample_table.slice(2600, 12).select(["id", "text", "title"]).to_pylist())
    ]
    _write(tmp_path / "day1", "a.parquet", docs)
    withdrawn = {d["id"] for d in docs[::2]}
    day2 = [{**d, "title": "WITHDRAWN: " + d["title"]} if d["id"] in withdrawn else d for d in docs]
    day2[1] = {**day2[1], "text": "changed " + day2[1]["text"], "title": "changed too"}  # both: embedded again
    _write(tmp_path / "day2", "a.parquet", day2)
    db = tmp_path / "db"
    opts = ["source.metadata_columns=[title,scores]"]
    if chunked:
        opts += ["embed.long_text=chunk", "embed.chunk_overlap=4", "model.max_tokens=32"]
    run_index(_cfg(tmp_path / "day1", db, tiny_bert_dir, *opts))
    key = "id"
    before = {r[key]: r for r in _rows(db)}

    up = run_index(_cfg(tmp_path / "day2", db, tiny_bert_dir, *opts, "sink.mode=upsert"))
    assert (up.updated, up.skipped, up.rows_read) == (len(withdrawn), len(docs) - len(withdrawn) - 1, len(docs))
    assert "updated      6 (metadata only, not embedded again)" in up.format()
    after = _rows(db)
    assert len(after) == len({r[key] for r in after})  # every row once
    title = {d["id"]: d["title"] for d in day2}
    doc = (lambda r: r["doc_id"]) if chunked else (lambda r: r["id"])
    assert all(r["title"] == title[doc(r)] for r in after)
    for r in after:
        if doc(r) != docs[1]["id"]:  # same text: the very vector, text and hash it had
            old = before[r[key]]
            assert (r["vector"], r["text"], r["content_hash"]) == (old["vector"], old["text"], old["content_hash"])
    if chunked:
        assert max(r["chunk"] for r in after) >= 1  # documents of several chunks were rewritten whole
    again = run_index(_cfg(tmp_path / "day2", db, tiny_bert_dir, *opts, "sink.mode=upsert"))
    assert (again.updated, again.skipped, again.rows_written) == (0, len(docs), 0)


def test_counts_add_up_when_an_upsert_reads_an_id_twice_once_for_its_metadata_only(
    ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    """One file of a chunked upsert holds x twice (a new title, then a new text) and y twice (two new
    titles): every copy replaces the id's rows, and the duplicate check keeps the first written. It
    subtracted every removed row from ``embedded``, also the rows of a metadata-only copy, which the
    run counted as ``updated``: ``embedded -10``. Whichever copy was written first, the counts say
    what the table holds."""
    long = [r["text"][:600] for r in sample_table.slice(2700, 3).to_pylist()]
    x, y = [{"id": f"dup-{k}", "text": long[k], "title": "t0"} for k in range(2)]
    _write(tmp_path / "day1", "a.parquet", [x, y])
    day2 = [{**x, "title": "t1"}, {**y, "title": "y1"}, {**x, "text": long[2], "title": "t2"}, {**y, "title": "y2"}]
    _write(tmp_path / "day2", "a.parquet", day2)
    db = tmp_path / "db"
    opts = ["source.metadata_columns=[title]", "embed.long_text=chunk", "embed.chunk_overlap=4", "model.max_tokens=32"]
    run_index(_cfg(tmp_path / "day1", db, tiny_bert_dir, *opts))
    old_hash = {r["doc_id"]: r["content_hash"] for r in _rows(db)}
    up = run_index(
        _cfg(
            tmp_path / "day2",
            db,
            tiny_bert_dir,
            *opts,
            "sink.mode=upsert",
            "sink.rows_per_fragment=1",
            "compute.block_rows=1",
        )
    )
    rows = [r for r in _rows(db) if r["run_id"] == up.run_id]
    embedded = [r for r in rows if r["content_hash"] != old_hash[r["doc_id"]]]
    updated = {r["doc_id"] for r in rows if r["content_hash"] == old_hash[r["doc_id"]]}
    assert {r["doc_id"] for r in rows} == {"dup-0", "dup-1"}  # one copy of each stayed, whole
    assert (up.rows_written, up.updated) == (len(embedded), len(updated)), up.format()
    assert up.rows_read == 4 and up.skipped == 0
    removed = [r for r in _rows(db, "docs_rejects") if r["run_id"] == up.run_id]
    assert dict(up.rejected) == {"duplicate_id": len(removed)} and len(removed) > 2  # rows of 2 chunked copies


# -- found by the model-based test: a chunked document's windows in two batches ------------------------


def test_a_file_is_complete_only_when_every_window_of_its_documents_came_back():
    """tests/integration/test_table_model.py's chunked upsert: the last document of a file had two windows
    in two sink batches; a checkpoint between them committed the file without the second window, and
    the late batch then failed the run ('0/40 rows'), which left the document one chunk short for good."""
    checkpointer, runlog = staging_checkpointer({"a": 2}, checkpoint_rows=1)  # a checkpoint due after every batch
    # Both documents' first windows: every document seen, but the second became 2 rows and 1 came.
    checkpointer.add(stats_row("a", 2, "first windows", rows_due=3, rows_seen=2))
    assert runlog.records == []
    checkpointer.add(stats_row("a", 0, "second window", rows_due=0, rows_seen=1))
    assert runlog.fragments == [{"a": 2}]  # committed with both fragments
    checkpointer.finish(["a"])
