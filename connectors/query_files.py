"""Read a file of queries: Parquet, or JSON Lines (``.jsonl``/``.json``, e.g. a BEIR ``queries.jsonl``)."""

from __future__ import annotations

from typing import Optional

__all__ = ["read_query_file"]


def read_query_file(path: str, storage, columns: Optional[list] = None):
    """The file's schema (``columns`` None) or a table of those columns; ``storage`` (a
    :class:`connectors.storage.Storage`) opens ``s3://`` paths. Raises OSError/ValueError as read."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    fs, local = storage.fsspec(path)
    if path.endswith((".jsonl", ".json")):
        with fs.open(local, "rb") as f:
            table = pj.read_json(f)
        return table.schema if columns is None else table.select(columns)
    if columns is None:
        return pq.read_schema(local, filesystem=fs)
    return pq.read_table(local, columns=columns, filesystem=fs)
