"""Dead workers, killed drivers, incremental runs and bad input: every valid document exactly once.

Real local Ray, real LanceDB, the real packaged model; the fault tests kill real processes by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lancedb
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.lance.runs import RunLog
from connectors.parquet_source import SourceError
from pipelines.config import load_config
from pipelines.run.runner import run_index

ROOT = Path(__file__).resolve().parents[2]


def _docs(sample_table, start, n):
    t = sample_table.slice(start, n).select(["id", "text"])
    return t.cast(pa.schema([f.with_nullable(True) for f in t.schema]))


def _split(table, root: Path, parts: int, prefix="part"):
    root.mkdir(parents=True, exist_ok=True)
    size = -(-table.num_rows // parts)
    for k in range(parts):
        pq.write_table(table.slice(k * size, size), root / f"{prefix}-{k:02d}.parquet")
    return root


def _config(src, db, *extra):
    return load_config(
        overrides=[
            f"source.path={src}",
            f"sink.uri={db}",
            "sink.table=docs",
            "compute.block_rows=32",
            "sink.rows_per_fragment=64",
            *extra,
        ]
    )


def _table_ids(db, table="docs"):
    return lancedb.connect(str(db)).open_table(table).to_arrow().column("id").to_pylist()


def _encoder_pids():
    """Encoder actors of this test session's Ray only (ray.init started it below this process): never
    another cluster's on the machine, whose loss this test would then take for its own."""
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "MapWorker" in cmd and "EncodeStage" in cmd:
            found.append(proc.pid)
    return found


@pytest.mark.parametrize(
    "rows_per_execution",
    [pytest.param(None, marks=pytest.mark.slow), 240],  # CI: the task-run path, which the fault injection lacks
    ids=["one execution", "2 executions in their own tasks"],
)
def test_killed_encoder_actor_is_replaced_and_no_row_is_lost_or_doubled(
    ray_cluster, sample_table, tmp_path, rows_per_execution
):
    corpus = _split(_docs(sample_table, 0, 480), tmp_path / "src", 4)
    db = tmp_path / "db"
    result, error = {}, {}
    per_execution = f"compute.rows_per_execution={'null' if rows_per_execution is None else rows_per_execution}"

    def run():
        try:
            # The real model, at 64 tokens a document: what is tested is the actor's replacement, not
            # the vectors (a third of the embedding work of the full 256 tokens; blocks still last long
            # enough that the kill lands mid-run).
            config = _config(
                corpus,
                db,
                "compute.block_rows=16",
                "sink.checkpoint_rows=1000000",
                "model.max_tokens=64",
                per_execution,
            )
            result["summary"] = run_index(config)
        except Exception as exc:  # surfaced by the assertion below
            error["exc"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    killed = None
    deadline = time.time() + 240
    while time.time() < deadline and killed is None and worker.is_alive():
        data_dir = db / "docs.lance" / "data"
        pids = _encoder_pids()
        if pids and data_dir.exists() and any(data_dir.iterdir()):  # mid-run: fragments are being written
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.2)
    worker.join(timeout=600)
    assert killed is not None, "the encoder actor was never seen mid-run"
    assert "exc" not in error, error
    ids = _table_ids(db)
    assert len(ids) == len(set(ids)) == 480
    assert result["summary"].rows_read == 480
    assert killed not in _encoder_pids()


@pytest.mark.slow  # CI: the fault injection's driver kill and test_safe_writes' crashed overwrite resume
def test_killed_driver_resumes_with_same_run_id_without_redoing_finished_files(ray_cluster, sample_table, tmp_path):
    corpus = _split(_docs(sample_table, 500, 480), tmp_path / "src", 12)
    db = tmp_path / "db"
    args = [
        sys.executable,
        "-m",
        "jobs.index",
        "--set",
        f"source.path={corpus}",
        "--set",
        f"sink.uri={db}",
        "--set",
        "sink.table=docs",
        "--set",
        "run.id=nightly-1",
        "--set",
        "compute.block_rows=16",
        "--set",
        "sink.rows_per_fragment=40",
        "--set",
        "sink.checkpoint_rows=40",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["address"], "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runlog = RunLog(str(db), "docs")
    deadline = time.time() + 300
    done_before = {}
    while time.time() < deadline and proc.poll() is None:
        try:
            done_before = runlog.done_files("nightly-1")
        except Exception:  # the runs table may be mid-commit
            done_before = {}
        if len(done_before) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the driver finished before it could be killed"
    assert 3 <= len(done_before) < 12

    summary_file = tmp_path / "summary.json"
    second = subprocess.run(
        args + ["--summary-json", str(summary_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    done_rows = sum(d.rows for d in done_before.values())
    assert summary["resumed_files"] >= len(done_before)
    assert summary["rows_read"] <= 480 - done_rows  # finished files were not embedded again
    ids = _table_ids(db)
    assert len(ids) == len(set(ids)) == 480
    assert set(ids) == set(pq.read_table(corpus).column("id").to_pylist())

    # Running the finished run id again is a no-op: no duplicates, nothing embedded.
    third = subprocess.run(
        args + ["--summary-json", str(summary_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert json.loads(summary_file.read_text())["rows_read"] == 0
    assert sorted(_table_ids(db)) == sorted(ids)


@pytest.mark.slow  # CI: test_safe_writes' upsert and delete_missing cases
def test_incremental_upsert_embeds_only_new_and_changed_and_deletes_missing(ray_cluster, sample_table, tmp_path):
    base = _docs(sample_table, 1000, 300)
    corpus = tmp_path / "day1"
    _split(base, corpus, 2)
    db = tmp_path / "db"
    first = run_index(_config(corpus, db, "index.min_rows=256"))  # 300 rows, indexed and maintained below
    assert first.rows_written == 300
    table = lancedb.connect(str(db)).open_table("docs")
    before = {r["id"]: r for r in table.to_arrow().to_pylist()}

    rows = base.to_pylist()
    changed = {r["id"] for r in rows[:5]}
    deleted = {r["id"] for r in rows[5:10]}
    for r in rows[:5]:
        r["text"] = "Revised: " + r["text"]
    rows = [r for r in rows if r["id"] not in deleted]
    new = _docs(sample_table, 1400, 5).to_pylist()
    day2 = tmp_path / "day2"
    _split(pa.Table.from_pylist(rows + new, schema=base.schema), day2, 2)

    second = run_index(_config(day2, db, "sink.mode=upsert", "sink.delete_missing=true", "index.min_rows=256"))
    assert (second.rows_read, second.skipped, second.rows_written) == (300, 290, 10)
    assert second.deleted_missing == 5
    after = {r["id"]: r for r in lancedb.connect(str(db)).open_table("docs").to_arrow().to_pylist()}
    assert len(after) == 300 == lancedb.connect(str(db)).open_table("docs").count_rows()
    assert not deleted & set(after)
    assert {r["id"] for r in new} <= set(after)
    for i in changed:
        assert after[i]["text"].startswith("Revised: ")
        assert after[i]["content_hash"] != before[i]["content_hash"]
        assert not np.allclose(after[i]["vector"], before[i]["vector"])
    untouched = next(iter(set(after) - changed - {r["id"] for r in new}))
    assert after[untouched]["run_id"] == first.run_id  # not rewritten
    # New rows are searchable at once, through the maintained index.
    from pipelines.search.searcher import Searcher

    hits = Searcher.open(str(db), "docs").search(new[0]["text"], k=1)
    assert hits.column("id")[0].as_py() == new[0]["id"]
    assert second.index["type"] == "ivf_rq"

    # A third run over the same snapshot has nothing to do.
    third = run_index(_config(day2, db, "sink.mode=upsert", "sink.delete_missing=true", "index.min_rows=256"))
    assert (third.skipped, third.rows_written, third.deleted_missing) == (300, 0, 0)


def test_bad_rows_are_rejected_with_id_file_and_reason(ray_cluster, sample_table, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    docs = _docs(sample_table, 2000, 20).to_pylist()
    huge = {"id": "huge", "text": "word " * 25600}  # 100x the model's 256-token limit
    dup = {"id": docs[0]["id"], "text": "a second row with an id already used"}
    pq.write_table(pa.Table.from_pylist(docs + [huge, dup, {"id": "ws", "text": " \n "}]), src / "a.parquet")
    pq.write_table(
        pa.table({"id": ["bin-ok", "bin-bad"], "text": pa.array([b"valid bytes", b"\xff\xfe bad"], pa.binary())}),
        src / "b.parquet",
    )
    pq.write_table(pa.table({"id": ["int-1", "int-2"], "text": [1, 2]}), src / "c.parquet")
    pq.write_table(
        pa.table({"id": ["ls-1"], "text": pa.array(["large string row"], pa.large_string())}), src / "d.parquet"
    )
    (src / "e.parquet").write_bytes(b"PAR1 this is not parquet at all")
    db = tmp_path / "db"

    with pytest.raises(SourceError, match="e.parquet: not a readable Parquet file"):
        run_index(_config(src, db))
    summary = run_index(_config(src, db, "source.on_bad_file=skip"))

    assert list(summary.skipped_files) == [str(src / "e.parquet")]
    assert dict(summary.rejected) == {"empty_text": 1, "invalid_utf8": 1, "not_a_string": 2, "duplicate_id": 1}
    assert summary.rows_read == 28 == summary.rows_written + summary.rows_rejected
    assert summary.truncated == 1
    ids = _table_ids(db)
    assert len(ids) == len(set(ids)) == 23 and {"huge", "bin-ok", "ls-1"} <= set(ids)
    rejects = lancedb.connect(str(db)).open_table("docs_rejects").to_arrow().to_pylist()
    by_reason = {r["reason"]: r for r in rejects}
    assert by_reason["invalid_utf8"]["id"] == "bin-bad" and by_reason["invalid_utf8"]["file"].endswith("b.parquet")
    assert {r["id"] for r in rejects if r["reason"] == "not_a_string"} == {"int-1", "int-2"}
    assert by_reason["duplicate_id"]["id"] == docs[0]["id"]
    kept = [r for r in lancedb.connect(str(db)).open_table("docs").to_arrow().to_pylist() if r["id"] == docs[0]["id"]]
    assert kept[0]["text"] == docs[0]["text"]  # the first row written is kept

    # An append run that repeats an id an earlier run wrote: the earlier row stays, the new one is
    # rejected (the check looks up this run's ids among the older rows, not the whole table).
    more = tmp_path / "more"
    more.mkdir()
    pq.write_table(
        pa.table({"id": [docs[1]["id"], "fresh-1"], "text": ["again, with a known id", "a new document"]}),
        more / "f.parquet",
    )
    third = run_index(_config(more, db, "sink.mode=append"))
    assert dict(third.rejected) == {"duplicate_id": 1} and third.rows_written == 1
    rows = lancedb.connect(str(db)).open_table("docs").to_arrow().to_pylist()
    assert [r["text"] for r in rows if r["id"] == docs[1]["id"]] == [docs[1]["text"]]
    assert len(rows) == len({r["id"] for r in rows}) == 24
    rejects = lancedb.connect(str(db)).open_table("docs_rejects").to_arrow().to_pylist()
    assert {(r["id"], r["run_id"]) for r in rejects if r["reason"] == "duplicate_id"} >= {(docs[1]["id"], third.run_id)}


def test_source_errors_name_file_and_column_before_any_work(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pq.write_table(pa.table({"id": ["x"], "body": ["text"]}), a / "one.parquet")
    with pytest.raises(SourceError, match=r"one.parquet: missing column\(s\) text"):
        run_index(_config(a, tmp_path / "db"))
    pq.write_table(pa.table({"id": ["x"], "text": ["t"]}), b / "1.parquet")
    pq.write_table(pa.table({"id": [1.5], "text": ["t"]}), b / "2.parquet")
    with pytest.raises(SourceError, match=r"2.parquet: column id is double, but .*1.parquet has string"):
        run_index(_config(b, tmp_path / "db"))
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": ["x"], "text": ["t"]}), good)
    truncated = tmp_path / "trunc.parquet"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(SourceError, match="trunc.parquet: not a readable Parquet file"):
        run_index(_config(truncated, tmp_path / "db"))
    with pytest.raises(SourceError, match="no Parquet files found"):
        run_index(_config(tmp_path / "a" / "*.csv", tmp_path / "db"))


def test_long_documents_split_into_overlapping_chunks(ray_cluster, sample_table, tmp_path):
    docs = _docs(sample_table, 2100, 3).to_pylist()
    long_text = " ".join(r["text"] for r in _docs(sample_table, 2200, 12).to_pylist())
    src = tmp_path / "long.parquet"
    pq.write_table(pa.Table.from_pylist(docs + [{"id": "long", "text": long_text}]), src)
    db = tmp_path / "db"
    summary = run_index(_config(src, db, "embed.long_text=chunk", "embed.chunk_overlap=16", "model.max_tokens=128"))
    rows = lancedb.connect(str(db)).open_table("docs").to_arrow().to_pylist()
    long_rows = sorted((r for r in rows if r["doc_id"] == "long"), key=lambda r: r["chunk"])
    assert len(long_rows) > 5
    assert [r["chunk"] for r in long_rows] == list(range(len(long_rows)))
    assert [r["id"] for r in long_rows[:2]] == ["long#0", "long#1"]
    assert all(r["text"] in long_text for r in long_rows)
    assert long_text.startswith(long_rows[0]["text"][:50])
    # consecutive windows overlap: the next chunk starts before the previous one ends
    first_end = long_text.index(long_rows[0]["text"]) + len(long_rows[0]["text"])
    assert long_text.index(long_rows[1]["text"]) < first_end
    assert summary.rows_read == 4 and summary.truncated == 0
    by_doc = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r["chunk"])
    assert set(by_doc) == {d["id"] for d in docs} | {"long"}
    assert all(sorted(chunks) == list(range(len(chunks))) for chunks in by_doc.values())
    assert len({r["id"] for r in rows}) == len(rows)
