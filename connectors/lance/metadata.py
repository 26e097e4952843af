"""The table's schema metadata: the lineage this pipeline stores with it, and LanceDB's embedding function entry."""

from __future__ import annotations

import json
from typing import Optional, Union

import pyarrow as pa

from connectors import columns as C
from connectors.lance.lineage import Lineage
from connectors.lance.table import SinkError, _open, dataset_uri, table_schema

__all__ = [
    "EMBEDDING_FUNCTION",
    "EMBEDDING_FUNCTIONS_KEY",
    "LINEAGE_KEY",
    "lineage_in",
    "read_lineage",
    "table_metadata",
    "write_lineage",
]


LINEAGE_KEY = "embedpipe.lineage"
# LanceDB's own schema key for the embedding function of a vector column, and the name this project's
# function is registered under (connectors/lance/embedding_function.py): with it, plain LanceDB's
# ``table.search("text")`` embeds the query with the table's model.
EMBEDDING_FUNCTIONS_KEY = "embedding_functions"
EMBEDDING_FUNCTION = "embedpipe"


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


def table_metadata(lineage: Union[Lineage, dict]) -> dict[str, str]:
    """The schema metadata that goes with ``lineage``: the lineage itself, and the embedding function
    entry LanceDB reads (``embedding_functions``: name, its arguments, source and vector column),
    whose argument is what embeds a text exactly as the table's documents were embedded. A lineage
    without a model (a table this pipeline did not embed, say) gets no function. ``lineage``: a
    :class:`~connectors.lance.lineage.Lineage` or its dict."""
    if isinstance(lineage, Lineage):
        lineage = lineage.to_dict()
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


def write_lineage(
    db_uri: str, table: str, lineage: Union[Lineage, dict], storage_options: Optional[dict] = None
) -> None:
    ds = _open(dataset_uri(db_uri, table), storage_options)
    ds.update_schema_metadata(table_metadata(lineage))
