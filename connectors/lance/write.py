"""The sink's write stage: rows and rejects to uncommitted Lance fragments in Ray tasks, counts back.

This is the pattern of Ray Data's own Lance writer (``write_fragments`` in tasks, then
``LanceDataset.commit``), done in a ``map_batches`` stage instead of a ``Datasink`` so that the same
pass also writes rejected rows to ``<table>_rejects`` and returns per-batch counts and per-file
progress: one read of the source gives the table, the rejects, the run summary and the resume state.
Nothing is visible until the driver commits; a task that died after writing files leaves only
unreferenced files behind, never rows. The result is an ordinary LanceDB table.

Why checkpoints by file and not Ray Data's checkpointing: Ray's row-level checkpoint keeps the id of
every finished row (gigabytes at 100M documents). Here the resume state is one row per finished
input file in ``<table>_runs``, and every table row carries ``run_id`` and ``source_file``, so a
resumed run deletes the partial rows of unfinished files and redoes only those files.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import Counter
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors import columns as C
from connectors.lance.table import REJECT_SCHEMA

__all__ = ["FragmentWriter", "STATS_SCHEMA"]


STATS_SCHEMA = pa.schema(
    [
        ("file", pa.string()),  # the source file: one stats row per file and batch
        ("rows", pa.int64()),  # source rows (documents) of the file in this batch
        ("written", pa.int64()),  # table rows written (chunks when chunking)
        ("skipped", pa.int64()),  # unchanged documents an upsert left alone
        ("updated", pa.int64()),  # documents an upsert rewrote with new metadata and their old vectors
        ("rejected", pa.string()),  # JSON {reason: count}
        ("files", pa.string()),  # JSON {source file: source rows in this batch}
        # Table rows (chunks) this batch's documents became, and the table rows in the batch: a file is
        # complete when every one of its documents was seen and these two agree over its batches (a
        # chunked document's windows can come in different batches).
        ("rows_due", pa.int64()),
        ("rows_seen", pa.int64()),
        ("tokens", pa.int64()),
        ("truncated", pa.int64()),
        # Pickled {source file: ...}: a fragment never mixes files, so a file's rows can be committed
        # (or staged) when, and only when, the whole file is done.
        ("fragments", pa.binary()),  # list[FragmentMetadata]
        ("reject_fragments", pa.binary()),
        ("replaced_rowids", pa.binary()),  # upsert: uint64 addresses of the rows this file's rows replace
        ("encoders", pa.string()),  # JSON {"<node id>/<actor id>": rows} of the actors that embedded them
        ("writer_node", pa.string()),  # node id of the task that wrote this batch
    ]
)


def _replaced_rowids(batch: pa.Table, accepted: pa.Table, updates: pa.Table) -> dict[str, np.ndarray]:
    """Per source file, the addresses of the table's old rows that this batch's new rows replace (upsert)."""
    replaced: dict[str, np.ndarray] = {}
    if C.OLD_ROWID in batch.column_names:
        replacing = pa.concat_tables([t.select([C.FILE, C.OLD_ROWID]) for t in (accepted, updates)])
        for f, part in _by_file(replacing, replacing.column(C.FILE)).items():
            old = pc.list_flatten(part.column(C.OLD_ROWID).drop_null())
            if len(old):
                replaced[f] = np.unique(old.to_numpy(zero_copy_only=False).astype(np.uint64))
    return replaced


def _by_file(table: pa.Table, files: pa.ChunkedArray) -> dict[str, pa.Table]:
    """``table`` split by the values of ``files`` (its source file column), in order of appearance."""
    names = list(dict.fromkeys(files.to_pylist()))
    if len(names) == 1:
        return {names[0]: table}
    return {f: table.filter(pc.equal(files, f)) for f in names}


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - a report, never a reason to fail
        return "local"


class FragmentWriter:
    """Final stage: writes accepted rows and rejects as uncommitted Lance fragments; returns counts.

    Fragments are written per source file, so that the driver can make a file's rows visible (or
    stage them) exactly when the whole file is done, never a part of it.
    """

    def __init__(
        self,
        table_uri: str,
        rejects_uri: str,
        schema: pa.Schema,
        id_column: str,
        text_column: str,
        run_id: str,
        storage_options: Optional[dict] = None,
        existing=None,
        metadata_columns: Sequence[str] = (),
    ):
        self.table_uri = table_uri
        self.existing = existing  # connectors.lance.lookup.ExistingRows (upsert): the rows a metadata update rewrites
        self.metadata_columns = list(metadata_columns)
        self.rejects_uri = rejects_uri
        self.schema = schema
        self.id_column = id_column
        self.text_column = text_column
        self.run_id = run_id
        self.storage_options = storage_options

    def _write(self, table: pa.Table, uri: str, file_column: str) -> dict[str, list]:
        # Lance warns "No existing dataset at <uri>, it will be created" for every fragment written
        # before a table's first commit: every write of a new table's run, in the user's log. Only
        # that line is muted (Lance reads LANCE_LOG when it is first imported in this worker; a
        # LANCE_LOG of the user's own wins).
        os.environ.setdefault("LANCE_LOG", "warn,lance::dataset::write::insert=error")
        from lance.fragment import write_fragments

        if table.num_rows == 0:
            return {}
        return {
            f: write_fragments(part, uri, schema=part.schema, storage_options=self.storage_options)
            for f, part in _by_file(table, table.column(file_column)).items()
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        """One stats row per source file in the batch (a batch may hold rows of several files)."""
        if batch.num_rows == 0:
            return STATS_SCHEMA.empty_table()
        return pa.concat_tables([self._write_file(part) for part in _by_file(batch, batch.column(C.FILE)).values()])

    def _with_new_metadata(self, updates: pa.Table) -> pa.Table:
        """The table's rows of documents whose text is unchanged but whose metadata changed: read as the
        run began (vector, text, hash and, in a chunked table, every chunk), with the source's new
        metadata values, this run's id and file; they replace the old rows in the checkpoint's commit."""
        owner = {}  # row address -> the update row (source document) it belongs to
        for k, addresses in enumerate(updates.column(C.OLD_ROWID).to_pylist()):
            for a in addresses or ():
                owner[a] = k
        old = self.existing.rows(np.fromiter(owner, dtype=np.uint64, count=len(owner)), self.schema.names)
        of_row = pa.array([owner[a] for a in old.column("_rowid").to_pylist()], pa.int64())
        out = old.drop_columns(["_rowid"])
        new = {name: updates.column(name).take(of_row) for name in self.metadata_columns}
        new[C.SOURCE_FILE] = updates.column(C.FILE).take(of_row)
        new[C.RUN_ID] = pa.array([self.run_id] * out.num_rows, pa.string())
        for name, values in new.items():
            out = out.set_column(out.schema.get_field_index(name), name, values)
        return out.select(self.schema.names).cast(self.schema)

    def _reject_rows(self, rejected: pa.Table) -> pa.Table:
        """The ``<table>_rejects`` rows of the batch's rejected rows: id, file, reason, text, run id."""
        return pa.table(
            {
                "id": rejected.column(self.id_column).cast(pa.string()),
                "file": rejected.column(C.FILE),
                "reason": rejected.column(C.REJECT),
                "text": rejected.column(self.text_column),
                "run_id": pa.array([self.run_id] * rejected.num_rows, pa.string()),
            },
            schema=REJECT_SCHEMA,
        )

    def _write_file(self, batch: pa.Table) -> pa.Table:
        """One source file's rows of a batch: write its table rows and rejects as fragments; its stats row."""
        n = batch.num_rows
        reject = batch.column(C.REJECT)
        unchanged = pc.fill_null(pc.equal(reject, C.SKIP_UNCHANGED), False)
        metadata_only = pc.fill_null(pc.equal(reject, C.METADATA_ONLY), False)
        accepted = batch.filter(pc.is_null(reject))
        rejected = batch.filter(pc.and_(pc.is_valid(reject), pc.invert(pc.or_(unchanged, metadata_only))))
        run = pa.array([self.run_id] * accepted.num_rows, pa.string())
        accepted = accepted.append_column(C.SOURCE_FILE, accepted.column(C.FILE)).append_column(C.RUN_ID, run)
        rows = accepted.select(self.schema.names).cast(self.schema)
        embedded = rows.num_rows
        updates = batch.filter(metadata_only)
        if updates.num_rows:
            rows = pa.concat_tables([rows, self._with_new_metadata(updates)])
        rejects = self._reject_rows(rejected)
        # A chunked document is one source row however many windows it became.
        is_doc = (
            pc.fill_null(pc.equal(batch.column(C.CHUNK), 0), True)
            if C.CHUNK in batch.column_names
            else pa.array(np.ones(n, dtype=bool))
        )
        files = Counter(f for f, d in zip(batch.column(C.FILE).to_pylist(), is_doc.to_pylist()) if d)
        pieces = batch.column(C.CHUNKS) if C.CHUNKS in batch.column_names else pa.array(np.ones(n, dtype=np.int32))
        rows_due = int(pc.sum(pc.if_else(is_doc, pc.cast(pieces, pa.int64()), 0)).as_py() or 0)
        replaced = _replaced_rowids(batch, accepted, updates)
        stats = {
            "file": [batch.column(C.FILE)[0].as_py()],
            "rows": [int(pc.sum(pc.cast(is_doc, pa.int64())).as_py() or 0)],
            "written": [embedded],
            "skipped": [int(pc.sum(pc.cast(unchanged, pa.int64())).as_py() or 0)],
            "updated": [updates.num_rows],
            "rejected": [json.dumps(Counter(rejected.column(C.REJECT).to_pylist()))],
            "files": [json.dumps(files)],
            "rows_due": [rows_due],
            "rows_seen": [n],
            "tokens": [pc.sum(batch.column(C.N_TOKENS)).as_py() or 0],
            "truncated": [pc.sum(pc.cast(batch.column(C.TRUNCATED), pa.int64())).as_py() or 0],
            "fragments": [pickle.dumps(self._write(rows, self.table_uri, C.SOURCE_FILE))],
            "reject_fragments": [pickle.dumps(self._write(rejects, self.rejects_uri, "file"))],
            "replaced_rowids": [pickle.dumps(replaced)],
            "encoders": [
                json.dumps(Counter(batch.column(C.ENCODER).to_pylist()) if C.ENCODER in batch.column_names else {})
            ],
            "writer_node": [_node_id()],
        }
        return pa.table(stats, schema=STATS_SCHEMA)
