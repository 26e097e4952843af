"""`jobs.maintain`: index upkeep by the append/upsert policy, and the duplicate-id check.

The table is an ordinary Lance dataset with this pipeline's lineage and random unit vectors (no
model needed to test upkeep): 600 rows, then +100 (under reindex_fraction: optimize), then +300
(over it: rebuild), then a row whose id is already there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from connectors import lance_sink
from pipelines.config import load_config
from pipelines.maintenance import DuplicateIdsError, run_maintenance

ROOT = Path(__file__).resolve().parent.parent
DIM = 32
LINEAGE = {"dimension": DIM, "metric": "cosine", "source": {"id_column": "id", "text_column": "text"}}


def _rows(ids: list[str], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("vector", pa.list_(pa.float32(), DIM))],
                       metadata={lance_sink.LINEAGE_KEY: json.dumps(LINEAGE)})
    return pa.table({"id": ids, "text": [f"text {i}" for i in ids],
                     "vector": pa.FixedSizeListArray.from_arrays(v.ravel(), DIM)}, schema=schema)


def _add(db: Path, ids: list[str], seed: int) -> None:
    import lance

    uri = lance_sink.dataset_uri(str(db), "t")
    mode = "append" if Path(uri).exists() else "create"
    lance.write_dataset(_rows(ids, seed), uri, mode=mode)


def _maintain(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.maintain", "--set", f"sink.uri={db}", "--set", "sink.table=t",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_upkeep_builds_optimizes_rebuilds_and_reports(tmp_path):
    db = tmp_path / "db"
    config = load_config(overrides=[f"sink.uri={db}", "sink.table=t"])
    _add(db, [f"d{i}" for i in range(600)], seed=0)

    first = run_maintenance(config)
    assert first.before == {"type": "none", "unindexed_rows": 600}
    assert first.action == "built" and first.after["indexed_rows"] == 600 and first.after["unindexed_rows"] == 0
    assert first.duplicate_ids == 0
    stored = lance_sink.read_lineage(str(db), "t")
    assert stored["index"]["type"] == "ivf_pq" and stored["query_defaults"]["nprobes"] >= 1

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
