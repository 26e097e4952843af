"""Upsert lookups: which rows, content hash and revision the table held for an id when the run began."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from connectors import columns as C
from connectors.lance_sink import _open
from connectors.sql import sql_list

__all__ = ["ExistingRows"]


class ExistingRows:
    """Upsert lookups in the table as it was when the run began.

    ``key_column`` is the document id: the id column, or ``doc_id`` in a chunked table, where one
    document is several rows. ``lookup`` answers ``doc id -> (content_hash, [row addresses],
    revision)``: the hash is the whole document's (every chunk carries it), the addresses are all
    its rows, which a changed document's new rows replace together, and the revision is the value
    of ``revision_column`` (see ``sink.revision_by``).
    """

    def __init__(
        self,
        uri: str,
        version: int,
        key_column: str,
        storage_options: Optional[dict] = None,
        revision_column: str = C.SOURCE_FILE,
    ):
        self.uri, self.version, self.key_column = uri, version, key_column
        self.revision_column = revision_column
        self.storage_options = storage_options
        self._ds = None

    def lookup(self, ids: Sequence[Any]) -> dict:
        if not ids:
            return {}
        if self._ds is None:
            self._ds = _open(self.uri, self.storage_options, self.version)
        columns = list(dict.fromkeys([self.key_column, C.HASH, self.revision_column]))
        found = self._ds.to_table(columns=columns, filter=f"{self.key_column} IN {sql_list(ids)}", with_row_id=True)
        out: dict = {}
        for row in found.to_pylist():
            i, h = row[self.key_column], row[C.HASH]
            old_hash, rows, revision = out.get(i, (h, [], row[self.revision_column]))
            rows.append(row["_rowid"])
            # Chunks with different hashes (a half-replaced document) never count as unchanged.
            out[i] = (old_hash if old_hash == h else None, rows, revision)
        return out
