"""Production-safe writes (issue 13): chunked upserts, delete_missing on a partial source, concurrent
writers, crashed overwrites, resume by name and by file identity, and which revision of an id wins.

Real local Ray, real LanceDB/Lance tables, a real (tiny, random) BERT with MiniLM's tokenizer; the
crash tests kill a real driver process by pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import lancedb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.lance.commits import ConcurrentWriteError, commit_checkpoint
from helpers.job_main import run_job_main
from jobs.index import main as index_main
from pipelines.config import ConfigError, load_config
from pipelines.run.runner import run_index

# Names this change added are imported where they are used, so that this file also runs against
# the code before it (each test then fails on what it checks, which is how they were validated).

ROOT = Path(__file__).resolve().parents[2]


def _cfg(src, db, model, *extra):
    return load_config(
        overrides=[
            f"source.path={src}",
            f"sink.uri={db}",
            "sink.table=docs",
            f"model.path={model}",
            "compute.block_rows=16",
            "sink.rows_per_fragment=32",
            "index.type=none",
            *extra,
        ]
    )


def _rows(db, table="docs"):
    return lancedb.connect(str(db)).open_table(table).to_arrow().to_pylist()


def _write(root: Path, name: str, rows: list[dict], schema=None):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def _corpus(root: Path, sample_table, start: int, files: int, rows: int) -> Path:
    """``files`` Parquet files of ``rows`` real documents each, from sample row ``start`` on."""
    for k in range(files):
        _write(root, f"p{k}.parquet", _docs(sample_table, start + rows * k, rows))
    return root


def _docs(sample_table, start, n):
    t = sample_table.slice(start, n).select(["id", "text"])
    return [{"id": r["id"], "text": r["text"][:300]} for r in t.to_pylist()]


# -- 1. chunked upserts -------------------------------------------------------------------------------


def test_chunked_upsert_replaces_whole_documents_skips_unchanged_and_deletes_all_chunks(
    ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    long_a = " ".join(r["text"] for r in _docs(sample_table, 3000 % 3000, 6))
    docs = _docs(sample_table, 100, 8)
    day1 = [*docs, {"id": "long", "text": long_a}, {"id": "gone", "text": long_a[::-1]}]
    _write(tmp_path / "day1", "a.parquet", day1)
    db = tmp_path / "db"
    chunk = ["embed.long_text=chunk", "embed.chunk_overlap=4", "model.max_tokens=48"]
    run_index(_cfg(tmp_path / "day1", db, tiny_bert_dir, *chunk))
    before = _rows(db)
    assert len([r for r in before if r["doc_id"] == "long"]) >= 3

    long_b = long_a[: len(long_a) // 3]  # fewer chunks now
    day2 = [*docs, {"id": "long", "text": long_b}]
    _write(tmp_path / "day2", "a.parquet", day2)
    up = run_index(
        _cfg(
            tmp_path / "day2",
            db,
            tiny_bert_dir,
            *chunk,
            "sink.mode=upsert",
            "sink.delete_missing=true",
            "sink.max_delete_fraction=0.9",
        )
    )  # "gone" has many chunks
    assert up.skipped == len(docs)  # unchanged documents were not embedded again
    assert up.rows_read == len(docs) + 1

    # The upserted table holds exactly what a fresh run over day 2 writes.
    fresh = tmp_path / "fresh"
    run_index(_cfg(tmp_path / "day2", fresh, tiny_bert_dir, *chunk))
    got = sorted((r["id"], r["doc_id"], r["chunk"], r["text"]) for r in _rows(db))
    want = sorted((r["id"], r["doc_id"], r["chunk"], r["text"]) for r in _rows(fresh))
    assert got == want
    assert not [r for r in _rows(db) if r["doc_id"] == "gone"]
    assert up.deleted_missing == len([r for r in before if r["doc_id"] == "gone"])
    # Rerun: nothing changes, nothing is rejected as a duplicate.
    again = run_index(_cfg(tmp_path / "day2", db, tiny_bert_dir, *chunk, "sink.mode=upsert"))
    assert (again.skipped, again.rows_written, again.rows_rejected) == (len(docs) + 1, 0, 0)


# -- 2. delete_missing on a partial view --------------------------------------------------------------


@pytest.fixture(scope="module")
def four_files_indexed(ray_cluster, sample_table, tiny_bert_dir, tmp_path_factory) -> tuple[Path, Path]:
    """4 files of 20 documents and the table one run made of them: (source, db), made once. Each test
    below changes both, so it works on a copy of each (``_copy``)."""
    root = tmp_path_factory.mktemp("four-files")
    src = _corpus(root / "src", sample_table, 300, 4, 20)
    run_index(_cfg(src, root / "db", tiny_bert_dir))
    return src, root / "db"


def _copy(made: tuple[Path, Path], to: Path) -> tuple[Path, Path]:
    src, db = made
    return Path(shutil.copytree(src, to / "src")), Path(shutil.copytree(db, to / "db"))


def test_delete_missing_deletes_nothing_when_a_file_was_skipped(four_files_indexed, tiny_bert_dir, tmp_path):
    src, db = _copy(four_files_indexed, tmp_path)
    (src / "p1.parquet").write_bytes(b"PAR1 truncated upload")
    up = run_index(
        _cfg(src, db, tiny_bert_dir, "sink.mode=upsert", "sink.delete_missing=true", "source.on_bad_file=skip")
    )
    assert len(_rows(db)) == 80  # p1's 20 documents too
    assert up.deleted_missing == 0 and "unreadable" in up.delete_missing_skipped
    assert "deleted      none" in up.format()


def test_delete_missing_fails_before_deleting_more_than_the_allowed_share(
    four_files_indexed, sample_table, tiny_bert_dir, tmp_path
):
    _, db = _copy(four_files_indexed, tmp_path)
    partial = tmp_path / "partial"
    _write(partial, "p0.parquet", _docs(sample_table, 300, 20))  # a prefix listed with 1 of 4 files
    cfg = ["sink.mode=upsert", "sink.delete_missing=true", "run.id=daily-2"]
    from pipelines.run.delete_missing import DeleteGuardError

    with pytest.raises(DeleteGuardError, match=r"75\.0% of table 'docs'.*sink.max_delete_fraction=0.1"):
        run_index(_cfg(partial, db, tiny_bert_dir, *cfg))
    assert len(_rows(db)) == 80
    done = run_index(_cfg(partial, db, tiny_bert_dir, *cfg, "sink.max_delete_fraction=0.8"))
    assert done.deleted_missing == 60 and len(_rows(db)) == 20
    with pytest.raises(ConfigError, match="max_delete_fraction applies only with sink.delete_missing"):
        _cfg(partial, db, tiny_bert_dir, "sink.max_delete_fraction=0.5")


# -- 3. concurrent writers ----------------------------------------------------------------------------


def _job(args, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.index", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _job_args(src, db, model, *extra):
    out = []
    for item in [
        f"source.path={src}",
        f"sink.uri={db}",
        "sink.table=docs",
        f"model.path={model}",
        "compute.block_rows=8",
        "sink.rows_per_fragment=16",
        "sink.checkpoint_rows=16",
        "index.type=none",
        *extra,
    ]:
        out += ["--set", item]
    return out


def _env(ray_cluster):
    return {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["address"], "HF_HUB_OFFLINE": "1"}


def _wait_for(predicate, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - a table mid-commit; look again
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _stop_outside_the_lease_lock(proc, lock: Path) -> None:
    """SIGSTOP ``proc`` at a moment it does not hold the lease's flock (it takes it for a moment to
    write the lease), so that another job can still read the lease and be refused."""
    import fcntl

    for _ in range(1000):
        proc.send_signal(signal.SIGSTOP)
        with open(lock, "rb") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                proc.send_signal(signal.SIGCONT)
                time.sleep(0.01)
                continue
            fcntl.flock(fh, fcntl.LOCK_UN)
            return
    raise AssertionError(f"{lock} stayed locked")


def test_second_job_on_a_table_fails_fast_naming_the_running_run(ray_cluster, sample_table, tiny_bert_dir, tmp_path):
    src = _corpus(tmp_path / "src", sample_table, 400, 2, 8)
    db = tmp_path / "db"
    env = _env(ray_cluster)
    first = _job(_job_args(src, db, tiny_bert_dir, "run.id=first-run"), env)
    _wait_for(lambda: (db / "docs.lease").exists(), what="the first job's lease")
    # The first job is stopped (SIGSTOP) while it holds the lease, so it is still running whatever the
    # size of its corpus when the second starts; it goes on once the second was refused.
    _stop_outside_the_lease_lock(first, db / "docs.lease.lock")
    try:
        # An overwrite to another dimension, started while the first runs: refused before any work.
        # The second job's command line runs in this process (helpers/job_main.py): its exit code and its
        # line are what is checked, and it is refused in a second instead of after a Python start.
        second = run_job_main(index_main, _job_args(src, db, tiny_bert_dir, "embed.dimension=16", "run.id=second-run"))
        assert first.poll() is None, "the first job ended before the second started"
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    assert "being written by run first-run" in second.stderr and "sink.on_busy=wait" in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    rows = _rows(db)
    assert len(rows) == len({r["id"] for r in rows}) == 16
    assert {len(r["vector"]) for r in rows} == {32}
    assert not (db / "docs.lease").exists()  # released


@pytest.mark.slow  # CI: test_a_waiting_lease_is_taken_when_the_holder_releases_it (the lease's wait, no jobs)
def test_second_job_with_on_busy_wait_runs_after_the_first(ray_cluster, sample_table, tiny_bert_dir, tmp_path):
    src = _corpus(tmp_path / "src", sample_table, 400, 8, 40)
    db = tmp_path / "db"
    env = _env(ray_cluster)
    first = _job(_job_args(src, db, tiny_bert_dir, "run.id=third-run"), env)
    _wait_for(lambda: (db / "docs.lease").exists(), what="the third job's lease")
    waited = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.index",
            *_job_args(src, db, tiny_bert_dir, "sink.on_busy=wait", "sink.mode=upsert"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    first.communicate(timeout=600)
    assert first.returncode == 0 and waited.returncode == 0, waited.stderr[-2000:]
    assert "waiting for run third-run" in waited.stderr
    assert len(_rows(db)) == 320


def test_lease_of_a_dead_local_process_is_taken_over_at_once(tmp_path):
    from connectors.lance.lease import TableBusyError, TableLease

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "docs.lease").write_text(
        f'{{"run_id": "crashed", "token": "t", "host": "{os.uname().nodename}", "pid": {dead.pid}, '
        f'"started": {time.time()}, "heartbeat": {time.time()}}}'
    )
    lease = TableLease(str(tmp_path), "docs", "next-run", timeout_s=600)
    with lease:
        assert lease.took_over["run_id"] == "crashed"
        with pytest.raises(TableBusyError, match="being written by run next-run"):
            TableLease(str(tmp_path), "docs", "other", timeout_s=600).acquire()
    assert not (tmp_path / "docs.lease").exists()


def test_a_waiting_lease_is_taken_when_the_holder_releases_it(tmp_path):
    import threading

    from connectors.lance.lease import TableLease

    said = []
    holder = TableLease(str(tmp_path), "docs", "first", timeout_s=600).acquire()
    waiter = TableLease(
        str(tmp_path), "docs", "second", timeout_s=600, on_busy="wait", wait_poll_s=0.1, log=said.append
    )
    got = threading.Event()
    thread = threading.Thread(target=lambda: (waiter.acquire(), got.set()))
    thread.start()
    time.sleep(1.0)
    assert not got.is_set() and said == [said[0]] and "waiting for run first" in said[0]
    holder.release()
    thread.join(timeout=10)
    assert got.is_set() and waiter.read()["run_id"] == "second"
    waiter.release()
    assert not (tmp_path / "docs.lease").exists()


def test_a_commit_onto_a_table_another_writer_changed_is_refused(tmp_path):
    uri = str(tmp_path / "t.lance")
    schema = pa.schema([("id", pa.string()), ("x", pa.int64())])
    ds = lance.write_dataset(pa.table({"id": [f"d{i}" for i in range(10)], "x": list(range(10))}, schema=schema), uri)
    ds = lance.write_dataset(pa.table({"id": ["e0", "e1"], "x": [10, 11]}, schema=schema), uri, mode="append")
    started = ds.version
    replaced = ds.to_table(filter="id IN ('d1', 'e0')", with_row_id=True).column("_rowid").to_numpy()
    from lance.fragment import write_fragments

    new = write_fragments(pa.table({"id": ["d1", "e0"], "x": [100, 101]}, schema=schema), uri, schema=schema)
    ds.optimize.compact_files()  # another process compacts: rows move to new addresses
    with pytest.raises(ConcurrentWriteError, match=r"expected version 2, found [3-9]"):
        commit_checkpoint(uri, schema, new, replaced, started)
    assert lance.dataset(uri).count_rows() == 12  # nothing deleted, nothing added
    # Without the foreign commit the same checkpoint replaces both rows in one version.
    v = commit_checkpoint(
        uri,
        schema,
        new,
        lance.dataset(uri).to_table(filter="id IN ('d1', 'e0')", with_row_id=True).column("_rowid").to_numpy(),
        lance.dataset(uri).version,
    )
    got = {r["id"]: r["x"] for r in lance.dataset(uri).to_table().to_pylist()}
    assert v == lance.dataset(uri).version and len(got) == 12 and (got["d1"], got["e0"]) == (100, 101)


# -- 4/5/6. crashed overwrite, resume by name, resume by file identity --------------------------------


def _runlog(db):
    from connectors.lance.runs import RunLog

    return RunLog(str(db), "docs")


def _kill_mid_run(proc, db, count, total, run_id=None) -> bool:
    """SIGKILL the job's driver once at least ``count`` of its ``total`` files are done, and say whether
    the kill landed mid-run (fewer than ``total`` done, so nothing was published yet).

    The driver is the only process that commits, stages or records a file, and it is stopped
    (SIGSTOP) while the run log is read, so what was read is exactly what the kill leaves. A small
    corpus can finish in a fraction of a second once the encoder is up: a caller whose kill came too
    late runs its scenario again rather than test nothing."""
    runlog = _runlog(db)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
        try:
            rid = run_id or runlog.last_unfinished()
            done = len(runlog.done_files(rid)) if rid else 0
        except Exception:  # noqa: BLE001 - no run log yet
            done = 0
        if done >= count:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return done < total
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    assert proc.poll() is not None, f"no {count} finished files in 300 s"
    return False  # the job ended between two looks


def test_crashed_overwrite_leaves_the_old_table_and_resumes_by_name(
    four_files_indexed, ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    new = _corpus(tmp_path / "new", sample_table, 1000, 8, 8)
    env = _env(ray_cluster)
    for attempt in range(3):
        # The old table: a copy of the module's finished one (80 other documents), not a job run of its own.
        db = Path(shutil.copytree(four_files_indexed[1], tmp_path / f"db{attempt}"))
        old_ids = sorted(r["id"] for r in _rows(db))
        proc = _job(_job_args(new, db, tiny_bert_dir), env)
        if _kill_mid_run(proc, db, 3, 8):
            break
    else:
        pytest.fail("in three tries the overwrite finished before a kill landed mid-run")
    err = proc.stderr.read()
    run_id = _runlog(db).last_unfinished()
    assert f"run {run_id} started" in err and f"--set run.id={run_id}" in err  # said at the start
    # Readers still see the old table, whole and readable.
    assert sorted(r["id"] for r in _rows(db)) == old_ids
    # The resume's command line, in this process (helpers/job_main.py): the kill above needed a process.
    resumed = run_job_main(
        index_main, [*_job_args(new, db, tiny_bert_dir, "run.resume=true"), "--summary-json", tmp_path / "s.json"]
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"run {run_id} resumed" in resumed.stderr
    rows = _rows(db)
    assert sorted(r["id"] for r in rows) == sorted(pq.read_table(new).column("id").to_pylist())
    assert {r["run_id"] for r in rows} == {run_id}
    with pytest.raises(ConfigError, match="has no unfinished run"):
        run_index(_cfg(new, db, tiny_bert_dir, "run.resume=true"))


def test_resume_redoes_a_rewritten_file_and_leaves_nothing_of_a_renamed_one(
    ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    src = _corpus(tmp_path / "src", sample_table, 1400, 8, 8)
    env = _env(ray_cluster)
    for attempt in range(3):
        db = tmp_path / f"db{attempt}"
        proc = _job(_job_args(src, db, tiny_bert_dir, "sink.mode=append", "run.id=r1"), env)
        if _kill_mid_run(proc, db, 3, 8, "r1"):
            break
    else:
        pytest.fail("in three tries the run finished before a kill landed mid-run")
    done = _runlog(db).done_files("r1")
    finished = sorted(done)[0]
    unfinished = sorted(str(p) for p in src.glob("*.parquet") if str(p) not in done)
    # A finished file is rewritten with new texts; an unfinished one is renamed.
    rewritten = [{"id": r["id"], "text": "rewritten " + r["text"]} for r in pq.read_table(finished).to_pylist()]
    _write(Path(finished).parent, Path(finished).name, rewritten)
    renamed = Path(unfinished[-1])
    renamed.rename(renamed.with_name("renamed-" + renamed.name))
    # The resume's command line, in this process (helpers/job_main.py): the kill above needed a process.
    resumed = run_job_main(index_main, _job_args(src, db, tiny_bert_dir, "sink.mode=append", "run.id=r1"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = _rows(db)
    assert len(rows) == len({r["id"] for r in rows}) == 64
    assert {r["source_file"] for r in rows} <= {str(p) for p in src.glob("*.parquet")}  # nothing of the old name
    by_id = {r["id"]: r["text"] for r in rows}
    assert all(by_id[r["id"]] == r["text"] for r in rewritten)


# -- 7. which revision wins ---------------------------------------------------------------------------


def test_latest_partition_wins_in_overwrite_and_upsert_runs(ray_cluster, sample_table, tiny_bert_dir, tmp_path):
    docs = _docs(sample_table, 1800, 10)
    src = tmp_path / "src"
    _write(src, "date=2026-11-05/a.parquet", [{**d, "text": "old " + d["text"]} for d in docs[:5]] + docs[5:])
    _write(src, "date=2026-11-20/a.parquet", [{**d, "text": "new " + d["text"]} for d in docs[:5]])
    db = tmp_path / "db"
    first = run_index(_cfg(src, db, tiny_bert_dir))
    texts = {r["id"]: r["text"] for r in _rows(db)}
    assert len(texts) == 10 == len(_rows(db))
    assert all(texts[d["id"]].startswith("new ") for d in docs[:5])
    assert first.rejected == {"superseded": 5}
    assert first.table_rows == 10  # counted after the duplicate check, not before
    rejects = _rows(db, "docs_rejects")
    assert {(r["id"], r["reason"]) for r in rejects} == {(d["id"], "superseded") for d in docs[:5]}
    assert all("2026-11-05" in r["file"] for r in rejects)
    # Upsert over the same two partitions: the table already holds the 11-20 texts (unchanged);
    # the 11-05 revisions must not replace them.
    up = run_index(_cfg(src, db, tiny_bert_dir, "sink.mode=upsert"))
    assert {r["id"]: r["text"] for r in _rows(db)} == texts, up.format()


def test_revision_column_decides_which_row_wins(ray_cluster, sample_table, tiny_bert_dir, tmp_path):
    docs = _docs(sample_table, 1900, 4)
    src = tmp_path / "src"
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("updated_at", pa.int64())])
    _write(src, "b.parquet", [{**d, "text": "v1 " + d["text"], "updated_at": 1} for d in docs], schema)
    _write(src, "a.parquet", [{**d, "text": "v2 " + d["text"], "updated_at": 2} for d in docs], schema)
    db = tmp_path / "db"
    run_index(_cfg(src, db, tiny_bert_dir, "source.metadata_columns=[updated_at]", "sink.revision_by=updated_at"))
    rows = _rows(db)
    assert len(rows) == 4 and all(r["text"].startswith("v2 ") and r["updated_at"] == 2 for r in rows)
    with pytest.raises(ConfigError, match="sink.revision_by=updated_at: must be 'path' or one of"):
        _cfg(src, db, tiny_bert_dir, "sink.revision_by=updated_at")


def test_a_revision_tie_across_two_checkpoints_keeps_the_first_written_row(
    ray_cluster, sample_table, tiny_bert_dir, tmp_path
):
    """One id in two files of one upsert run, the same revision in both, each only a metadata change:
    both rows replace the row the id had, in two checkpoints. The first checkpoint's commit removed
    that row's fragment, and the second failed the run ('fragment 0 ... is gone'). A tie is two rows
    in one revision: the first written stays, the other is a ``duplicate_id``."""
    (x, text), (y, other) = [(d["id"], d["text"]) for d in _docs(sample_table, 1950, 2)]
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("title", pa.string()), ("rev", pa.int64())])
    _write(
        tmp_path / "d1",
        "a.parquet",
        [{"id": x, "text": text, "title": "t0", "rev": 1}, {"id": y, "text": other, "title": "y", "rev": 1}],
        schema,
    )
    for name in ("a", "b"):
        _write(tmp_path / "d2", f"{name}.parquet", [{"id": x, "text": text, "title": f"t{name}", "rev": 2}], schema)
    db = tmp_path / "db"
    opts = [
        "source.metadata_columns=[title,rev]",
        "sink.revision_by=rev",
        "sink.rows_per_fragment=1",
        "compute.block_rows=1",
    ]
    run_index(_cfg(tmp_path / "d1", db, tiny_bert_dir, *opts))  # x alone in its fragment
    up = run_index(_cfg(tmp_path / "d2", db, tiny_bert_dir, *opts, "sink.mode=upsert", "sink.checkpoint_rows=1"))
    assert up.checkpoints == 2
    # Both copies were counted as updated (metadata only); the one removed is rejected instead.
    assert (up.rows_read, up.rows_written, up.updated, dict(up.rejected)) == (2, 0, 1, {"duplicate_id": 1})
    rows = {r["id"]: r for r in _rows(db)}
    assert sorted(rows) == sorted([x, y]) and rows[y]["title"] == "y"
    kept = rows[x]
    assert kept["title"] in ("ta", "tb") and kept["rev"] == 2
    lost = [r for r in _rows(db, "docs_rejects") if r["id"] == x]
    assert [(r["reason"], r["file"]) for r in lost] == [
        ("duplicate_id", str(tmp_path / "d2" / ("b.parquet" if kept["title"] == "ta" else "a.parquet")))
    ]


class StagingRunLog:
    """A staged run's log as the Checkpointer uses it: a checkpoint only records the files it stages
    (their names, and how many fragments each)."""

    def __init__(self):
        self.records, self.fragments = [], []

    def record(self, run_id, done, kind="file"):
        self.records.append(sorted(d.file for d in done))
        self.fragments.append({d.file: len(d.fragments) for d in done})


def staging_checkpointer(expected_rows: dict, checkpoint_rows: int):
    """A staged run's Checkpointer over ``expected_rows`` and its log (nothing is committed)."""
    from pipelines.run.checkpoints import Checkpointer

    runlog = StagingRunLog()
    checkpointer = Checkpointer(
        run_id="r",
        runlog=runlog,
        table_uri="t",
        rejects_uri="r",
        table_schema=None,
        expected_rows=expected_rows,
        identity={},
        staged=True,
        checkpoint_rows=checkpoint_rows,
        table_version=None,
        rejects_version=None,
        on_batch=lambda row: None,
    )
    return checkpointer, runlog


def stats_row(file: str, docs: int, fragment: str, **extra) -> dict:
    """A sink stats row of one batch of ``file``: ``docs`` documents, written in one fragment."""
    import json
    import pickle

    return {
        "file": file,
        "rows": docs,
        "files": json.dumps({file: docs}),
        "fragments": pickle.dumps({file: [fragment]}),
        "reject_fragments": pickle.dumps({}),
        "replaced_rowids": pickle.dumps({}),
        **extra,
    }


def test_a_checkpoint_that_found_no_complete_file_is_due_again_at_the_next_batch():
    """Batches of several files interleave; a checkpoint due while no file was complete used to
    wait another sink.checkpoint_rows rows before it looked again, although a file completed in
    between."""

    def batch(file: str, rows: int) -> dict:
        return stats_row(file, rows, f"frag-{file}")

    checkpointer, runlog = staging_checkpointer({"a": 4, "b": 4}, checkpoint_rows=3)
    checkpointer.add(batch("a", 2))
    checkpointer.add(batch("b", 2))  # 4 rows since the start: due, but no file is complete yet
    assert runlog.records == []
    checkpointer.add(batch("a", 2))  # "a" complete: the due checkpoint happens now
    assert runlog.records == [["a"]] and checkpointer.checkpoints == 1
    checkpointer.add(batch("b", 2))  # 2 rows since that checkpoint: not due
    assert runlog.records == [["a"]]
    checkpointer.finish(["a", "b"])
    assert runlog.records == [["a"], ["b"]] and checkpointer.rows_done == 8
