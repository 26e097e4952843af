"""`jobs.maintain`: index upkeep by the append/upsert policy, housekeeping, the duplicate-id check.

The table is an ordinary Lance dataset with this pipeline's lineage and random unit vectors (no
model needed to test upkeep): 600 rows, then +100 (under reindex_fraction: optimize), then +300
(over it: rebuild), then a row whose id is already there. Housekeeping is tested on the tables that
real indexing runs leave (many small commits to the table, its rejects and its run log), and on
direct Lance writes for the version rules: retention, the index's version, uncommitted files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.lance.commits import commit_checkpoint
from connectors.lance.metadata import LINEAGE_KEY, read_lineage
from connectors.lance.table import dataset_uri
from pipelines.config import ConfigError, load_config
from pipelines.maintenance import DuplicateIdsError, run_maintenance

ROOT = Path(__file__).resolve().parents[2]
DIM = 32
# Tables of 600-1,000 rows: index.min_rows=auto (31,250 rows at 32 dimensions) would leave them unindexed.
INDEXED = "index.min_rows=256"
LINEAGE = {"dimension": DIM, "metric": "cosine", "source": {"id_column": "id", "text_column": "text"}}


def _rows(ids: list[str], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    schema = pa.schema(
        [("id", pa.string()), ("text", pa.string()), ("vector", pa.list_(pa.float32(), DIM))],
        metadata={LINEAGE_KEY: json.dumps(LINEAGE)},
    )
    return pa.table(
        {"id": ids, "text": [f"text {i}" for i in ids], "vector": pa.FixedSizeListArray.from_arrays(v.ravel(), DIM)},
        schema=schema,
    )


def _add(db: Path, ids: list[str], seed: int) -> None:
    uri = dataset_uri(str(db), "t")
    mode = "append" if Path(uri).exists() else "create"
    lance.write_dataset(_rows(ids, seed), uri, mode=mode)


def _maintain(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.maintain", "--set", f"sink.uri={db}", "--set", "sink.table=t", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_upkeep_builds_optimizes_rebuilds_and_reports(tmp_path):
    db = tmp_path / "db"
    config = load_config(overrides=[f"sink.uri={db}", "sink.table=t", INDEXED])
    _add(db, [f"d{i}" for i in range(600)], seed=0)

    first = run_maintenance(config)
    assert first.before == {"type": "none", "unindexed_rows": 600}
    assert first.action == "built" and first.after["indexed_rows"] == 600 and first.after["unindexed_rows"] == 0
    assert first.duplicate_ids == 0
    stored = read_lineage(str(db), "t")
    assert stored["index"]["type"] == "ivf_rq" and stored["query_defaults"]["nprobes"] >= 1
    # A table another writer made gets its full-text index too, recorded where queries look for it.
    assert first.text_index["how"] == "built" and first.text_index["rows"] == 600
    assert stored["index"]["fts"] == first.text_index and "full-text    built on text" in first.format()

    _add(db, [f"d{i}" for i in range(600, 700)], seed=1)  # 100 new rows: 17% of the indexed ones
    second = run_maintenance(config)
    assert (second.before["indexed_rows"], second.before["unindexed_rows"]) == (600, 100)
    assert second.action == "optimized"
    assert (second.after["indexed_rows"], second.after["unindexed_rows"]) == (700, 0)

    _add(db, [f"d{i}" for i in range(700, 1000)], seed=2)  # 300 more: 43%, past reindex_fraction=25%
    third = run_maintenance(config)
    assert third.before["unindexed_rows"] == 300 and third.action == "rebuilt"
    assert (third.after["indexed_rows"], third.after["unindexed_rows"]) == (1000, 0)
    assert third.rows == 1000 and third.duplicate_ids == 0
    # The rebuild rewrote the lineage's index: the full-text index's record is still in it, current.
    assert third.text_index["how"] == "updated" and read_lineage(str(db), "t")["index"]["fts"]["rows"] == 1000


def test_duplicate_ids_are_counted_named_and_fail_the_job(tmp_path):
    db = tmp_path / "db"
    _add(db, [f"d{i}" for i in range(50)], seed=0)
    _add(db, ["d7", "d7", "new"], seed=1)  # d7 three times in all

    report = run_maintenance(load_config(overrides=[f"sink.uri={db}", "sink.table=t"]))
    assert report.duplicate_ids == 2 and report.duplicate_examples == ["d7"]
    with pytest.raises(DuplicateIdsError, match="d7"):
        report.raise_for_duplicates()

    done = _maintain(db, "--summary-json", "-")
    assert done.returncode == 1
    assert "error: DuplicateIdsError:" in done.stderr and "d7" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])  # the report is printed before the error
    assert summary["duplicate_ids"] == 2 and summary["rows"] == 53


def test_missing_table_is_a_user_error(tmp_path):
    done = _maintain(tmp_path / "nowhere")
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no table 't' in {tmp_path / 'nowhere'}"


def _uri(db: Path, name: str = "t") -> str:
    return dataset_uri(str(db), name)


def _fragments(db: Path, name: str) -> int:
    return len(lance.dataset(_uri(db, name)).get_fragments())


def _content(db: Path, name: str) -> list:
    rows = lance.dataset(_uri(db, name)).to_table().to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _opens(db: Path, version: int, name: str = "t") -> bool:
    try:
        lance.dataset(_uri(db, name), version=version).count_rows()
    except (ValueError, OSError):
        return False
    return True


def test_real_runs_leave_many_fragments_that_maintain_compacts_and_prunes(
    ray_cluster, tiny_bert_dir, sample_table, tmp_path
):
    db = tmp_path / "db"
    docs = sample_table.select(["id", "text"])
    docs = docs.cast(pa.schema([f.with_nullable(True) for f in docs.schema]))
    for day in range(2):  # two daily append runs, each with a rejected row and small checkpoints
        src = tmp_path / f"day{day}"
        src.mkdir()
        rows = docs.slice(day * 12, 12).to_pylist() + [{"id": f"empty-{day}", "text": ""}]
        pq.write_table(pa.Table.from_pylist(rows, schema=docs.schema), src / "part.parquet")
        from pipelines.run.runner import run_index

        summary = run_index(
            load_config(
                overrides=[
                    f"source.path={src}",
                    f"sink.uri={db}",
                    "sink.table=docs",
                    "sink.mode=append",
                    f"model.path={tiny_bert_dir}",
                    "compute.block_rows=4",
                    "sink.rows_per_fragment=4",
                    "sink.checkpoint_rows=4",
                ]
            )
        )
        # An append run commits at each checkpoint, and the summary times the commit apart from the run log.
        assert summary.checkpoint_timings and all(
            t["commit_s"] > 0 and t["runlog_s"] > 0 for t in summary.checkpoint_timings
        )
    names = ["docs", "docs_rejects", "docs_runs"]
    before = {
        n: (_fragments(db, n), _content(db, n), lance.dataset(_uri(db, n)).versions()[0]["version"]) for n in names
    }
    assert before["docs"][0] >= 6 and before["docs_rejects"][0] >= 2 and before["docs_runs"][0] >= 4
    assert len(before["docs"][1]) == 24 and len(before["docs_rejects"][1]) == 2

    report = run_maintenance(load_config(overrides=[f"sink.uri={db}", "sink.table=docs", "sink.keep_versions=0"]))

    done = {h.table: h for h in report.housekeeping}
    assert list(done) == names
    for n in names:
        assert (
            (done[n].fragments_before, done[n].fragments_after)
            == (before[n][0], 1)
            == (before[n][0], _fragments(db, n))
        )
        assert _content(db, n) == before[n][1]  # the same rows, vectors included
        assert done[n].versions_removed >= 2 and done[n].bytes_freed > 0
        assert not _opens(db, before[n][2], n)  # time travel to a pruned version fails
        assert done[n].versions_after == len(lance.dataset(_uri(db, n)).versions())
    from pipelines.search.searcher import Searcher

    probe = before["docs"][1][5]
    assert Searcher.open(str(db), "docs").search(probe["text"], k=1).column("id")[0].as_py() == probe["id"]
    assert "docs_runs: fragments" in report.format()
    assert json.loads(report.to_json())["housekeeping"][2]["fragments_after"] == 1


def test_versions_older_than_keep_versions_are_pruned_newer_ones_kept(tmp_path):
    db = tmp_path / "db"
    for k in range(3):
        _add(db, [f"old{k}-{i}" for i in range(5)], seed=k)  # versions 1-3
    time.sleep(4)
    for k in range(2):
        _add(db, [f"new{k}-{i}" for i in range(5)], seed=10 + k)  # versions 4-5, under 2 s old below

    report = run_maintenance(load_config(overrides=[f"sink.uri={db}", "sink.table=t", "sink.keep_versions=2s"]))

    (table, *_) = report.housekeeping
    assert [v["version"] for v in lance.dataset(_uri(db)).versions()][:2] == [4, 5]
    assert table.versions_removed == 3 and not any(_opens(db, v) for v in (1, 2, 3))
    assert lance.dataset(_uri(db), version=4).count_rows() == 20  # a kept version still reads as it was
    assert lance.dataset(_uri(db)).count_rows() == 25 and table.fragments_after == 1


def test_pruning_keeps_uncommitted_fragments_of_a_running_job(tmp_path):
    from lance.fragment import write_fragments

    db = tmp_path / "db"
    for k in range(4):
        _add(db, [f"d{k}-{i}" for i in range(5)], seed=k)
    # What an indexing run holds between checkpoints: data files written, not committed yet.
    pending = write_fragments(_rows(["p1", "p2"], seed=9), _uri(db))
    files = [Path(_uri(db)) / "data" / f.path for frag in pending for f in frag.files]
    assert files and all(f.exists() for f in files)

    report = run_maintenance(load_config(overrides=[f"sink.uri={db}", "sink.table=t", "sink.keep_versions=0"]))

    assert report.housekeeping[0].versions_removed >= 4 and not _opens(db, 1)
    assert all(f.exists() for f in files)  # Lance cannot tell them from leftovers: delete_unverified stays off
    commit_checkpoint(_uri(db), _rows([], 0).schema, pending, np.zeros(0, np.uint64), lance.dataset(_uri(db)).version)
    assert {"p1", "p2"} <= set(lance.dataset(_uri(db)).to_table(columns=["id"]).column("id").to_pylist())


def test_the_version_the_index_was_built_on_and_the_latest_survive_pruning(tmp_path):
    db = tmp_path / "db"
    config = load_config(overrides=[f"sink.uri={db}", "sink.table=t", "sink.keep_versions=0", INDEXED])
    _add(db, [f"d{i}" for i in range(600)], seed=0)
    _add(db, [f"d{i}" for i in range(600, 620)], seed=1)  # version 2: the index is built on it
    first = run_maintenance(config)
    assert first.action == "built" and first.housekeeping[0].index_version == 2
    _add(db, [f"d{i}" for i in range(620, 660)], seed=2)

    second = run_maintenance(config)

    kept = [v["version"] for v in lance.dataset(_uri(db)).versions()]
    assert kept[0] == 2 and kept[-1] == lance.dataset(_uri(db)).latest_version
    assert not _opens(db, 1) and lance.dataset(_uri(db), version=2).count_rows() == 620
    assert first.housekeeping[0].versions_removed == 1  # version 1: older than the index's
    assert second.housekeeping[0].index_version == 2  # and it, the latest and all between stay
    table = __import__("lancedb").connect(str(db)).open_table("t")
    assert table.count_rows() == 660 and table.index_stats("vector_idx").num_unindexed_rows == 0
    probe = lance.dataset(_uri(db)).to_table(columns=["id", "vector"], filter="id = 'd640'").to_pylist()[0]
    assert table.search(probe["vector"]).limit(1).to_list()[0]["id"] == "d640"


def test_keep_versions_null_compacts_without_pruning_and_the_job_reports_it(tmp_path):
    db = tmp_path / "db"
    for k in range(3):
        _add(db, [f"d{k}-{i}" for i in range(5)], seed=k)

    done = _maintain(db, "--set", "sink.keep_versions=null", "--summary-json", "-")

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    table = summary["housekeeping"][0]
    assert (table["table"], table["fragments_before"], table["fragments_after"]) == ("t", 3, 1)
    assert table["pruned"] is False and table["versions_removed"] == 0 and _opens(db, 1)
    assert [h["exists"] for h in summary["housekeeping"][1:]] == [False, False]  # no runs wrote t
    assert "versions never pruned" in done.stdout and "t_rejects: no such table" in done.stdout


@pytest.mark.parametrize("value", ["7", "7 days", "-1d", "1.5h", "true", "[]"])
def test_keep_versions_must_be_a_duration(value):
    with pytest.raises(ConfigError, match=r"sink\.keep_versions: .*not a duration"):
        load_config(overrides=[f"sink.keep_versions={value}"])
    for good, days in (("7d", 7), ("36h", 1.5), ("0", 0)):
        from pipelines.config import parse_duration

        assert (
            parse_duration(load_config(overrides=[f"sink.keep_versions={good}"]).sink.keep_versions).total_seconds()
            == days * 86400
        )
