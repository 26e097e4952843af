"""Small Parquet corpora the integration tests build from the bundled sample."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def two_files_with_bad_rows(sample: pa.Table, root: Path, rows: int, first: int) -> Path:
    """``rows`` sample documents (id, text) in two files under ``root``: the first ``first`` in
    ``a.parquet``, the rest in ``b.parquet`` followed by two rows the run must reject
    (``bad-null``: null text, ``bad-empty``: blank text)."""
    root.mkdir(parents=True, exist_ok=True)
    docs = sample.slice(0, rows).select(["id", "text"])
    docs = docs.cast(pa.schema([f.with_nullable(True) for f in docs.schema]))  # the sample's are not nullable
    pq.write_table(docs.slice(0, first), root / "a.parquet")
    bad = pa.table({"id": ["bad-null", "bad-empty"], "text": [None, " "]}, schema=docs.schema)
    pq.write_table(pa.concat_tables([docs.slice(first), bad]), root / "b.parquet")
    return root
