"""Skip-unchanged stage (``sink.mode=upsert``): compare each document with the table's row(s) of its id.

- same content hash: ``unchanged``, skips tokenizing and encoding;
- the table's row is a later revision than this one (``sink.revision_by``): ``superseded``. With a
  revision column, a higher value in the table wins. With ``path``, the table's row wins when it came
  from a file that this run also reads and whose path sorts later (``date=2026-11-20/`` over
  ``date=2026-11-05/`` in one backfill run); a row from a file outside this run is always replaced,
  so a new snapshot wins however its files are named;
- otherwise the document is new or changed and carries the addresses of the rows it replaces (all
  chunks of a chunked document), which the driver deletes in the commit that adds the new rows.
"""

from __future__ import annotations

from typing import Iterable, Optional

import pyarrow as pa

from pipelines import columns as C

__all__ = ["SkipUnchangedStage"]


def _rank(value) -> tuple:
    return (value is not None, value if value is not None else 0)


class SkipUnchangedStage:
    def __init__(self, existing, id_column: str, revision_column: Optional[str] = None,
                 source_files: Iterable[str] = ()):
        self.existing = existing  # connectors.lance_sink.ExistingRows: doc id -> (hash, [addresses], revision)
        self.id_column = id_column
        self.revision_column = revision_column  # None: revision by path (the row's file)
        self.source_files = frozenset(source_files)

    def _later_in_table(self, stored, mine) -> bool:
        if self.revision_column is None and stored not in self.source_files:
            return False
        return _rank(stored) > _rank(mine)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(self.id_column).to_pylist()
        hashes = batch.column(C.HASH).to_pylist()
        reject = batch.column(C.REJECT).to_pylist()
        revisions = batch.column(self.revision_column or C.FILE).to_pylist()
        found = self.existing.lookup(list({i for i, r in zip(ids, reject) if r is None}))
        old_rowids = []
        for k, (i, h) in enumerate(zip(ids, hashes)):
            hit = found.get(i) if reject[k] is None else None
            if hit is not None and self._later_in_table(hit[2], revisions[k]):
                reject[k] = "superseded"
                old_rowids.append(None)
            elif hit is not None and hit[0] == h:
                reject[k] = C.SKIP_UNCHANGED
                old_rowids.append(None)
            else:
                old_rowids.append(hit[1] if hit is not None else None)
        batch = batch.set_column(batch.schema.get_field_index(C.REJECT), C.REJECT, pa.array(reject, pa.string()))
        return batch.append_column(C.OLD_ROWID, pa.array(old_rowids, pa.list_(pa.uint64())))
