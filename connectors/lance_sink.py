"""The sink's tables: their names and places, schemas, versions, lineage, and the sink's errors.

The sink writes like Ray Data's own Lance writer (fragments in tasks, then one commit in the
driver), in three modules: :mod:`connectors.lance_writer` (the write stage),
:mod:`connectors.lance_commits` (checkpoint and overwrite commits, deletes) and
:mod:`connectors.lance_lookup` (upsert lookups). Why checkpoints by file and not Ray Data's
checkpointing: Ray's row-level checkpoint keeps the id of every finished row (gigabytes at 100M
documents). Here the resume state is one row per finished input file in ``<table>_runs``, and every
table row carries ``run_id`` and ``source_file``, so a resumed run deletes the partial rows of
unfinished files and redoes only those files.
"""

from __future__ import annotations

import json
from typing import Callable, Iterator, Optional

import pyarrow as pa

from connectors import columns as C
from connectors.errors import UserError

__all__ = [
    "EMBEDDING_FUNCTION",
    "EMBEDDING_FUNCTIONS_KEY",
    "LINEAGE_KEY",
    "lineage_in",
    "REJECT_SCHEMA",
    "SinkError",
    "dataset_uri",
    "map_table",
    "read_lineage",
    "rejects_table",
    "runs_table",
    "table_schema",
    "table_version",
    "table_metadata",
    "write_lineage",
]


LINEAGE_KEY = "embedpipe.lineage"
# LanceDB's own schema key for the embedding function of a vector column, and the name this project's
# function is registered under (connectors/lancedb_function.py): with it, plain LanceDB's
# ``table.search("text")`` embeds the query with the table's model.
EMBEDDING_FUNCTIONS_KEY = "embedding_functions"
EMBEDDING_FUNCTION = "embedpipe"
REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("file", pa.string()),
        ("reason", pa.string()),
        ("text", pa.string()),
        ("run_id", pa.string()),
    ]
)


class SinkError(UserError):
    """The sink cannot be written as configured (table exists, lineage differs, ...)."""


def rejects_table(table: str) -> str:
    """The name of the table that keeps ``table``'s rejected rows."""
    return table + "_rejects"


def runs_table(table: str) -> str:
    """The table that logs ``table``'s runs (:class:`connectors.run_log.RunLog`)."""
    return table + "_runs"


def dataset_uri(db_uri: str, table: str) -> str:
    """Where LanceDB keeps table ``table`` of database ``db_uri``."""
    return f"{db_uri.rstrip('/')}/{table}.lance"


def _open(uri: str, storage_options: Optional[dict] = None, version: Optional[int] = None):
    import lance

    try:
        return lance.dataset(uri, version=version, storage_options=storage_options)
    except (ValueError, OSError, FileNotFoundError):
        return None


def table_version(db_uri: str, table: str, storage_options: Optional[dict] = None) -> Optional[int]:
    """The table's current version, or None when it does not exist."""
    ds = _open(dataset_uri(db_uri, table), storage_options)
    return None if ds is None else ds.version


def table_schema(
    db_uri: str, table: str, storage_options: Optional[dict] = None, version: Optional[int] = None
) -> Optional[pa.Schema]:
    """The table's schema (with its metadata) at ``version`` (default: the latest), None when it does not exist."""
    ds = _open(dataset_uri(db_uri, table), storage_options, version)
    return None if ds is None else ds.schema


def read_lineage(db_uri: str, table: str, storage_options: Optional[dict] = None) -> Optional[dict]:
    """The lineage stored with the table, None when the table does not exist.

    Raises:
        SinkError: the table exists but was not written by this pipeline.
    """
    schema = table_schema(db_uri, table, storage_options)
    if schema is None:
        return None
    return lineage_in(schema, f"table {table!r} in {db_uri}")


def lineage_in(schema: pa.Schema, what: str) -> dict:
    """The lineage in a table's ``schema`` (``what`` names the table in the error).

    Raises:
        SinkError: the schema has none: the table was not written by this pipeline.
    """
    raw = (schema.metadata or {}).get(LINEAGE_KEY.encode())
    if raw is None:
        raise SinkError(f"{what} has no {LINEAGE_KEY} metadata: it was not written by this pipeline")
    return json.loads(raw)


def table_metadata(lineage: dict) -> dict[str, str]:
    """The schema metadata that goes with ``lineage``: the lineage itself, and the embedding function
    entry LanceDB reads (``embedding_functions``: name, its arguments, source and vector column),
    whose argument is what embeds a text exactly as the table's documents were embedded. A lineage
    without a model (a table this pipeline did not embed, say) gets no function."""
    metadata = {LINEAGE_KEY: json.dumps(lineage, sort_keys=True)}
    if not all(k in lineage for k in ("model", "dimension", "metric", "source")):
        return metadata
    embedding = {k: lineage[k] for k in ("model", "dimension", "metric")}
    embedding["normalize"] = lineage.get("normalize", True)
    function = {
        "name": EMBEDDING_FUNCTION,
        "model": {"lineage": embedding},
        "source_column": lineage["source"]["text_column"],
        "vector_column": C.VECTOR,
    }
    return {**metadata, EMBEDDING_FUNCTIONS_KEY: json.dumps([function], sort_keys=True)}


def write_lineage(db_uri: str, table: str, lineage: dict, storage_options: Optional[dict] = None) -> None:
    ds = _open(dataset_uri(db_uri, table), storage_options)
    ds.update_schema_metadata(table_metadata(lineage))


def map_table(
    db_uri: str,
    source: str,
    table: str,
    schema: pa.Schema,
    transform: Callable[[pa.RecordBatch], pa.RecordBatch],
    *,
    version: Optional[int] = None,
    batch_rows: int = 8192,
    storage_options: Optional[dict] = None,
) -> int:
    """Write ``table`` (overwritten) as ``source``'s rows at ``version`` (default: the latest), each
    batch of at most ``batch_rows`` rows passed through ``transform``, which returns it in ``schema``
    (whose metadata goes with the table). Streamed: one batch at a time is held, never the table.
    Returns the rows written. No index is copied."""
    import lance

    src = lance.dataset(dataset_uri(db_uri, source), version=version, storage_options=storage_options)
    rows = 0

    def batches() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for batch in src.to_batches(batch_size=batch_rows):
            out = transform(batch)
            rows += out.num_rows
            yield out

    reader = pa.RecordBatchReader.from_batches(schema, batches())
    lance.write_dataset(
        reader, dataset_uri(db_uri, table), schema=schema, mode="overwrite", storage_options=storage_options
    )
    return rows
