"""Skip-unchanged stage (``sink.mode=upsert``): compare each document with the table's row(s) of its id.

- an older revision of an id that this run also reads in a later revision (``sink.revision_by``;
  found up front by :func:`pipelines.run.revisions.latest_revisions`): ``superseded``;
- with a revision column, a row whose table row has a higher value: ``superseded`` too (replaying
  an old partition never overwrites newer data);
- same content hash as the table's row and the same metadata: ``unchanged``, skips tokenizing and
  encoding;
- same content hash, other metadata (a title, a status column): ``metadata_only``, also not embedded
  again: the sink rewrites the table's row(s) of the document with their vectors and the new
  metadata, replacing them in the same commit (:class:`connectors.lance.write.FragmentWriter`);
- otherwise the document is new or changed and carries the addresses of the rows it replaces (all
  chunks of a chunked document), which the driver deletes in the commit that adds the new rows.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import pyarrow as pa

from connectors import columns as C
from connectors.lance.lookup import MIXED, same_values

__all__ = ["SkipUnchangedStage"]


def _rank(value) -> tuple:
    return (value is not None, value if value is not None else 0)


class SkipUnchangedStage:
    def __init__(
        self,
        existing,
        id_column: str,
        revision_column: Optional[str] = None,
        latest: Any = None,
        metadata_columns: Sequence[str] = (),
    ):
        # connectors.lance.lookup.ExistingRows: doc id -> (hash, [addresses], revision, metadata)
        self.existing = existing
        self.metadata_columns = list(metadata_columns)  # in the order ExistingRows reads them
        self.id_column = id_column
        self.revision_column = revision_column  # None: revision by path (the row's file)
        self.latest = latest  # ObjectRef (or dict) of {repeated id: latest revision in this run}
        self._latest: Optional[dict] = None

    def _repeated(self) -> dict:
        if self._latest is None:
            import ray

            self._latest = (
                {} if self.latest is None else (self.latest if isinstance(self.latest, dict) else ray.get(self.latest))
            )
        return self._latest

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(self.id_column).to_pylist()
        hashes = batch.column(C.HASH).to_pylist()
        reject = batch.column(C.REJECT).to_pylist()
        revisions = batch.column(self.revision_column or C.FILE).to_pylist()
        metadata = list(zip(*(batch.column(c).to_pylist() for c in self.metadata_columns))) or [()] * len(ids)
        repeated = self._repeated()
        for k, i in enumerate(ids):
            if reject[k] is None and i in repeated and _rank(revisions[k]) < _rank(repeated[i]):
                reject[k] = "superseded"
        found = self.existing.lookup(list({i for i, r in zip(ids, reject) if r is None}))
        old_rowids = []
        for k, (i, h) in enumerate(zip(ids, hashes)):
            hit = found.get(i) if reject[k] is None else None
            if hit is not None and self.revision_column and _rank(hit[2]) > _rank(revisions[k]):
                reject[k] = "superseded"
                old_rowids.append(None)
            elif hit is not None and hit[0] == h:
                same = hit[3] is not MIXED and all(same_values(a, b) for a, b in zip(hit[3], metadata[k]))
                reject[k] = C.SKIP_UNCHANGED if same else C.METADATA_ONLY
                old_rowids.append(None if same else hit[1])
            else:
                old_rowids.append(hit[1] if hit is not None else None)
        batch = batch.set_column(batch.schema.get_field_index(C.REJECT), C.REJECT, pa.array(reject, pa.string()))
        return batch.append_column(C.OLD_ROWID, pa.array(old_rowids, pa.list_(pa.uint64())))
