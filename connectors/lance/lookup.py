"""Upsert lookups: which rows, content hash, revision and metadata the table held for an id when the
run began, and those rows themselves (a metadata-only update rewrites them with their vectors)."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from connectors import columns as C
from connectors.lance.table import _open
from connectors.sql import sql_list

__all__ = ["ExistingRows", "MIXED", "same_values"]

MIXED = object()  # the metadata of a document whose rows (chunks) disagree: equal to nothing


def same_values(a: Any, b: Any) -> bool:
    """Whether two metadata values read from Arrow are the same (NaN is the same as NaN, also inside a
    list, struct or map value: ``[nan] == [nan]`` is False in Python, and such a row was rewritten by
    every upsert)."""
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    return a == b


class ExistingRows:
    """Upsert lookups in the table as it was when the run began.

    ``key_column`` is the document id: the id column, or ``doc_id`` in a chunked table, where one
    document is several rows. ``lookup`` answers ``doc id -> (content_hash, [row addresses],
    revision, metadata)``: the hash is the whole document's (every chunk carries it), the addresses
    are all its rows, which a changed document's new rows replace together, the revision is the value
    of ``revision_column`` (see ``sink.revision_by``) and the metadata the values of
    ``metadata_columns`` (a tuple; :data:`MIXED` when the document's rows disagree).
    """

    def __init__(
        self,
        uri: str,
        version: int,
        key_column: str,
        storage_options: Optional[dict] = None,
        revision_column: str = C.SOURCE_FILE,
        metadata_columns: Sequence[str] = (),
    ):
        self.uri, self.version, self.key_column = uri, version, key_column
        self.revision_column = revision_column
        self.metadata_columns = list(metadata_columns)
        self.storage_options = storage_options
        self._ds = None

    def _dataset(self):
        if self._ds is None:
            self._ds = _open(self.uri, self.storage_options, self.version)
        return self._ds

    def lookup(self, ids: Sequence[Any]) -> dict:
        if not ids:
            return {}
        columns = list(dict.fromkeys([self.key_column, C.HASH, self.revision_column, *self.metadata_columns]))
        found = self._dataset().to_table(
            columns=columns, filter=f"{self.key_column} IN {sql_list(ids)}", with_row_id=True
        )
        out: dict = {}
        for row in found.to_pylist():
            i, h = row[self.key_column], row[C.HASH]
            meta = tuple(row[c] for c in self.metadata_columns)
            old_hash, rows, revision, old_meta = out.get(i, (h, [], row[self.revision_column], meta))
            rows.append(row["_rowid"])
            # Chunks with different hashes (a half-replaced document) never count as unchanged.
            same = old_meta is not MIXED and all(same_values(a, b) for a, b in zip(old_meta, meta))
            out[i] = (old_hash if old_hash == h else None, rows, revision, old_meta if same else MIXED)
        return out

    def rows(self, addresses: np.ndarray, columns: Sequence[str], chunk: int = 10_000) -> pa.Table:
        """The table's rows at ``addresses`` (as the run began), ``columns`` and ``_rowid``."""
        parts = [
            self._dataset().to_table(
                columns=list(columns),
                filter=f"_rowid IN {sql_list(int(a) for a in addresses[start : start + chunk])}",
                with_row_id=True,
            )
            for start in range(0, len(addresses), chunk)
        ]
        return pa.concat_tables(parts) if parts else pa.table({})
