"""LanceDB sink: write fragments in Ray tasks, commit once in the driver, keep lineage in the table.

This is the pattern of Ray Data's own Lance writer (``write_fragments`` in tasks, one
``LanceDataset.commit``), done in a ``map_batches`` stage instead of a ``Datasink`` so that the same
pass also writes rejected rows to ``<table>_rejects`` and returns per-batch counts: one read of the
source gives the table, the rejects and the run summary, and nothing is visible until the commit.
The result is an ordinary LanceDB table (``lancedb.connect(uri).open_table(name)``).
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import columns as C

__all__ = [
    "LINEAGE_KEY",
    "REJECT_SCHEMA",
    "FragmentWriter",
    "SinkError",
    "commit_fragments",
    "dataset_uri",
    "read_lineage",
    "table_version",
    "write_lineage",
]

LINEAGE_KEY = "embedpipe.lineage"
REJECT_SCHEMA = pa.schema(
    [("id", pa.string()), ("file", pa.string()), ("reason", pa.string()), ("text", pa.string())]
)
STATS_SCHEMA = pa.schema(
    [
        ("rows", pa.int64()),
        ("written", pa.int64()),
        ("rejected", pa.string()),  # JSON {reason: count}
        ("tokens", pa.int64()),
        ("truncated", pa.int64()),
        ("fragments", pa.binary()),  # pickled list[FragmentMetadata]
        ("reject_fragments", pa.binary()),
    ]
)


class SinkError(ValueError):
    """The sink cannot be written as configured (table exists, lineage differs, ...)."""


def dataset_uri(db_uri: str, table: str) -> str:
    """Where LanceDB keeps table ``table`` of database ``db_uri``."""
    return f"{db_uri.rstrip('/')}/{table}.lance"


def _open(db_uri: str, table: str, storage_options: Optional[dict] = None):
    import lance

    try:
        return lance.dataset(dataset_uri(db_uri, table), storage_options=storage_options)
    except (ValueError, OSError, FileNotFoundError):
        return None


def table_version(db_uri: str, table: str, storage_options: Optional[dict] = None) -> Optional[int]:
    """The table's current version, or None when it does not exist."""
    ds = _open(db_uri, table, storage_options)
    return None if ds is None else ds.version


def read_lineage(db_uri: str, table: str, storage_options: Optional[dict] = None) -> Optional[dict]:
    """The lineage stored with the table, None when the table does not exist.

    Raises:
        SinkError: the table exists but was not written by this pipeline.
    """
    ds = _open(db_uri, table, storage_options)
    if ds is None:
        return None
    raw = (ds.schema.metadata or {}).get(LINEAGE_KEY.encode())
    if raw is None:
        raise SinkError(f"table {table!r} in {db_uri} has no {LINEAGE_KEY} metadata: "
                        "it was not written by this pipeline")
    return json.loads(raw)


def write_lineage(db_uri: str, table: str, lineage: dict, storage_options: Optional[dict] = None) -> None:
    ds = _open(db_uri, table, storage_options)
    ds.update_schema_metadata({LINEAGE_KEY: json.dumps(lineage, sort_keys=True)})


class FragmentWriter:
    """Final stage: writes accepted rows and rejects as uncommitted Lance fragments; returns counts."""

    def __init__(
        self,
        table_uri: str,
        rejects_uri: str,
        schema: pa.Schema,
        id_column: str,
        text_column: str,
        storage_options: Optional[dict] = None,
    ):
        self.table_uri = table_uri
        self.rejects_uri = rejects_uri
        self.schema = schema
        self.id_column = id_column
        self.text_column = text_column
        self.storage_options = storage_options

    def _write(self, table: pa.Table, uri: str) -> list:
        from lance.fragment import write_fragments

        if table.num_rows == 0:
            return []
        return write_fragments(table, uri, schema=table.schema, storage_options=self.storage_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        reject = batch.column(C.REJECT)
        accepted = batch.filter(pc.is_null(reject))
        rejected = batch.filter(pc.is_valid(reject))
        rows = accepted.select(self.schema.names).cast(self.schema)
        rejects = pa.table(
            {
                "id": rejected.column(self.id_column).cast(pa.string()),
                "file": rejected.column(C.FILE),
                "reason": rejected.column(C.REJECT),
                "text": rejected.column(self.text_column),
            },
            schema=REJECT_SCHEMA,
        )
        fragments = self._write(rows, self.table_uri)
        reject_fragments = self._write(rejects, self.rejects_uri)
        stats = {
            "rows": [batch.num_rows],
            "written": [rows.num_rows],
            "rejected": [json.dumps(Counter(rejected.column(C.REJECT).to_pylist()))],
            "tokens": [pc.sum(batch.column(C.N_TOKENS)).as_py() or 0],
            "truncated": [pc.sum(pc.cast(batch.column(C.TRUNCATED), pa.int64())).as_py() or 0],
            "fragments": [pickle.dumps(fragments)],
            "reject_fragments": [pickle.dumps(reject_fragments)],
        }
        return pa.table(stats, schema=STATS_SCHEMA)


def commit_fragments(
    uri: str,
    schema: pa.Schema,
    fragments: Sequence[Any],
    mode: str,
    read_version: Optional[int] = None,
    storage_options: Optional[dict] = None,
) -> int:
    """Make written fragments visible in one atomic commit; returns the new version.

    ``create``/``overwrite`` replace the table's content, ``append`` adds to version ``read_version``.
    """
    import lance

    if mode == "append" and read_version is not None:
        op = lance.LanceOperation.Append(list(fragments))
    else:
        op = lance.LanceOperation.Overwrite(schema, list(fragments))
    ds = lance.LanceDataset.commit(uri, op, read_version=read_version, storage_options=storage_options)
    return ds.version
