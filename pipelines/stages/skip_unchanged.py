"""Skip-unchanged stage (``sink.mode=upsert``): documents whose id and content hash are already in the
table are marked ``unchanged`` and skip tokenizing and encoding; changed ones carry the address of
the row they replace, which the driver deletes when it commits the new row.
"""

from __future__ import annotations

import pyarrow as pa

from pipelines import columns as C

__all__ = ["SkipUnchangedStage"]


class SkipUnchangedStage:
    def __init__(self, existing, id_column: str):
        self.existing = existing  # connectors.lance_sink.ExistingRows: id -> (hash, row address)
        self.id_column = id_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column(self.id_column).to_pylist()
        hashes = batch.column(C.HASH).to_pylist()
        reject = batch.column(C.REJECT).to_pylist()
        found = self.existing.lookup([i for i, r in zip(ids, reject) if r is None])
        old_rowid = []
        for k, (i, h) in enumerate(zip(ids, hashes)):
            hit = found.get(i) if reject[k] is None else None
            if hit is not None and hit[0] == h:
                reject[k] = C.SKIP_UNCHANGED
                old_rowid.append(None)
            else:
                old_rowid.append(hit[1] if hit is not None else None)
        batch = batch.set_column(batch.schema.get_field_index(C.REJECT), C.REJECT, pa.array(reject, pa.string()))
        return batch.append_column(C.OLD_ROWID, pa.array(old_rowid, pa.uint64()))
