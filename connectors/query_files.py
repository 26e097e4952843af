"""Read a file of queries: JSON Lines (``.jsonl``/``.json``) or Parquet, ids in ``id`` or ``_id`` (BEIR's).

Every job that takes queries reads them here: ``jobs.query --queries``, and the index step's
``index.tuning_queries_path``. A line that is not an object with a string ``text`` is an error
naming the file and line.
"""

from __future__ import annotations

import json
from typing import Optional

from connectors.errors import UserError

__all__ = ["QueryFileError", "read_queries", "read_query_file"]

ID_COLUMNS = ("id", "_id")  # the project's own files and BEIR's queries.jsonl


class QueryFileError(UserError):
    """A query file that cannot be read, or a line or column that is not a query; names the file."""


def _is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".json"))


def read_query_file(path: str, storage, columns: Optional[list] = None):
    """The file's schema (``columns`` None) or a table of those columns; ``storage`` (a
    :class:`connectors.storage.Storage`) opens ``s3://`` paths. Raises OSError/ValueError as read."""
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    fs, local = storage.fsspec(path)
    if _is_jsonl(path):
        with fs.open(local, "rb") as f:
            table = pj.read_json(f)
        return table.schema if columns is None else table.select(columns)
    if columns is None:
        return pq.read_schema(local, filesystem=fs)
    return pq.read_table(local, columns=columns, filesystem=fs)


def read_queries(path: str, storage=None) -> list[tuple[object, str]]:
    """``(id, text)`` for every query in ``path``, in file order; the id is the ``id`` or ``_id``
    value (None when the file has neither)."""
    if storage is None:
        from connectors.storage import Storage

        storage = Storage.resolve()
    if not _is_jsonl(path):
        try:
            schema = read_query_file(path, storage)
            id_column = next((c for c in ID_COLUMNS if c in schema.names), None)
            if "text" not in schema.names:
                raise QueryFileError(f"{path} has no 'text' column (columns: {', '.join(schema.names)})")
            table = read_query_file(path, storage, [c for c in (id_column, "text") if c])
        except (OSError, ValueError) as exc:
            if isinstance(exc, QueryFileError):
                raise
            raise QueryFileError(f"{path}: cannot read it as Parquet: {exc}") from exc
        ids = table.column(id_column).to_pylist() if id_column else [None] * table.num_rows
        return [(i, t) for i, t in zip(ids, table.column("text").to_pylist()) if t is not None]
    fs, local = storage.fsspec(path)
    queries = []
    try:
        with fs.open(local, "r") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise QueryFileError(f"{path}:{n}: expected a JSON object with a string 'text' (and 'id' or '_id')")
                queries.append((next((row[c] for c in ID_COLUMNS if c in row), None), row["text"]))
    except OSError as exc:
        raise QueryFileError(f"{path}: cannot read it: {exc}") from exc
    return queries
