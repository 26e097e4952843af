"""LanceDB sink: write fragments in Ray tasks, commit checkpoints in the driver, keep lineage in the table.

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
import pickle
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors import columns as C
from connectors.errors import UserError
from connectors.sql import sql_list, sql_value

__all__ = [
    "LINEAGE_KEY",
    "REJECT_SCHEMA",
    "ConcurrentWriteError",
    "ExistingRows",
    "FragmentWriter",
    "SinkError",
    "check_version",
    "commit_checkpoint",
    "commit_overwrite",
    "dataset_uri",
    "rejects_table",
    "runs_table",
    "delete_rows",
    "delete_run_leftovers",
    "read_lineage",
    "table_version",
    "write_lineage",
]

LINEAGE_KEY = "embedpipe.lineage"
REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("file", pa.string()),
        ("reason", pa.string()),
        ("text", pa.string()),
        ("run_id", pa.string()),
    ]
)
STATS_SCHEMA = pa.schema(
    [
        ("file", pa.string()),  # the source file: one stats row per file and batch
        ("rows", pa.int64()),  # source rows (documents) of the file in this batch
        ("written", pa.int64()),  # table rows written (chunks when chunking)
        ("skipped", pa.int64()),  # unchanged documents an upsert left alone
        ("rejected", pa.string()),  # JSON {reason: count}
        ("files", pa.string()),  # JSON {source file: source rows in this batch}
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


class SinkError(UserError):
    """The sink cannot be written as configured (table exists, lineage differs, ...)."""


class ConcurrentWriteError(RuntimeError):
    """The table changed under a running job (another writer): the job stops before committing."""


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


def read_lineage(db_uri: str, table: str, storage_options: Optional[dict] = None) -> Optional[dict]:
    """The lineage stored with the table, None when the table does not exist.

    Raises:
        SinkError: the table exists but was not written by this pipeline.
    """
    ds = _open(dataset_uri(db_uri, table), storage_options)
    if ds is None:
        return None
    raw = (ds.schema.metadata or {}).get(LINEAGE_KEY.encode())
    if raw is None:
        raise SinkError(
            f"table {table!r} in {db_uri} has no {LINEAGE_KEY} metadata: it was not written by this pipeline"
        )
    return json.loads(raw)


def write_lineage(db_uri: str, table: str, lineage: dict, storage_options: Optional[dict] = None) -> None:
    ds = _open(dataset_uri(db_uri, table), storage_options)
    ds.update_schema_metadata({LINEAGE_KEY: json.dumps(lineage, sort_keys=True)})


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
    ):
        self.table_uri = table_uri
        self.rejects_uri = rejects_uri
        self.schema = schema
        self.id_column = id_column
        self.text_column = text_column
        self.run_id = run_id
        self.storage_options = storage_options

    def _write(self, table: pa.Table, uri: str, file_column: str) -> dict[str, list]:
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

    def _write_file(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        reject = batch.column(C.REJECT)
        unchanged = pc.fill_null(pc.equal(reject, C.SKIP_UNCHANGED), False)
        accepted = batch.filter(pc.is_null(reject))
        rejected = batch.filter(pc.and_(pc.is_valid(reject), pc.invert(unchanged)))
        run = pa.array([self.run_id] * accepted.num_rows, pa.string())
        accepted = accepted.append_column(C.SOURCE_FILE, accepted.column(C.FILE)).append_column("run_id", run)
        rows = accepted.select(self.schema.names).cast(self.schema)
        rejects = pa.table(
            {
                "id": rejected.column(self.id_column).cast(pa.string()),
                "file": rejected.column(C.FILE),
                "reason": rejected.column(C.REJECT),
                "text": rejected.column(self.text_column),
                "run_id": pa.array([self.run_id] * rejected.num_rows, pa.string()),
            },
            schema=REJECT_SCHEMA,
        )
        # A chunked document is one source row however many windows it became.
        is_doc = (
            pc.fill_null(pc.equal(batch.column("chunk"), 0), True)
            if "chunk" in batch.column_names
            else pa.array(np.ones(n, dtype=bool))
        )
        files = Counter(f for f, d in zip(batch.column(C.FILE).to_pylist(), is_doc.to_pylist()) if d)
        replaced: dict[str, np.ndarray] = {}
        if C.OLD_ROWID in accepted.column_names:
            for f, part in _by_file(accepted, accepted.column(C.FILE)).items():
                old = pc.list_flatten(part.column(C.OLD_ROWID).drop_null())
                if len(old):
                    replaced[f] = np.unique(old.to_numpy(zero_copy_only=False).astype(np.uint64))
        stats = {
            "file": [batch.column(C.FILE)[0].as_py()],
            "rows": [int(pc.sum(pc.cast(is_doc, pa.int64())).as_py() or 0)],
            "written": [rows.num_rows],
            "skipped": [int(pc.sum(pc.cast(unchanged, pa.int64())).as_py() or 0)],
            "rejected": [json.dumps(Counter(rejected.column(C.REJECT).to_pylist()))],
            "files": [json.dumps(files)],
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


def commit_overwrite(
    uri: str, schema: pa.Schema, fragments: Sequence[Any], storage_options: Optional[dict] = None
) -> int:
    """Replace the dataset's content with ``fragments`` (or create it) in one commit; the new version."""
    import lance

    op = lance.LanceOperation.Overwrite(schema, list(fragments))
    return lance.LanceDataset.commit(uri, op, storage_options=storage_options).version


def check_version(uri: str, expected: Optional[int], what: str, storage_options: Optional[dict] = None) -> None:
    """Raise :class:`ConcurrentWriteError` when the dataset is not at ``expected`` (None: absent)."""
    ds = _open(uri, storage_options)
    found = None if ds is None else ds.version
    if found != expected:
        raise ConcurrentWriteError(
            f"{what} changed while this run was writing it: expected version {expected}, found {found} "
            "(another writer committed meanwhile). Nothing more was committed; resume the run with the "
            "same run.id once the other writer is done"
        )


def commit_checkpoint(
    uri: str,
    schema: pa.Schema,
    fragments: Sequence[Any],
    replaced_rowids: np.ndarray,
    expected_version: Optional[int],
    storage_options: Optional[dict] = None,
    what: str = "the table",
) -> Optional[int]:
    """Add ``fragments`` and delete the rows at ``replaced_rowids`` in ONE commit; the new version.

    The rows an upsert replaces are deleted by address (fragment id << 32 | offset), as found when
    the run began, in the same transaction that adds their new rows: readers never see a document
    twice or not at all. The commit is made only if the table is still at ``expected_version`` (the
    version this run last saw): another writer's commit, e.g. a compaction that moved rows to new
    addresses, stops the run (:class:`ConcurrentWriteError`) instead of deleting the wrong rows. Lance's
    own conflict check (``read_version``) covers the moment between that check and the commit.
    """
    import lance

    if not len(fragments) and not len(replaced_rowids):
        return expected_version
    check_version(uri, expected_version, what, storage_options)
    if expected_version is None:
        return commit_overwrite(uri, schema, fragments, storage_options)
    ds = _open(uri, storage_options)
    if not len(replaced_rowids):
        op = lance.LanceOperation.Append(list(fragments))
    else:
        removed, updated = [], []
        by_fragment: dict[int, list[int]] = {}
        for r in np.unique(replaced_rowids.astype(np.uint64)):
            by_fragment.setdefault(int(r) >> 32, []).append(int(r))
        for fid, rows in sorted(by_fragment.items()):
            fragment = ds.get_fragment(fid)
            if fragment is None:
                raise ConcurrentWriteError(
                    f"{what}: fragment {fid}, which holds rows this upsert replaces, is gone (the table "
                    "was compacted or rewritten during the run); resume the run with the same run.id"
                )
            meta = fragment.delete(f"_rowid IN {sql_list(rows)}")
            (removed.append(fid) if meta is None else updated.append(meta))
        op = lance.LanceOperation.Update(
            removed_fragment_ids=removed, updated_fragments=updated, new_fragments=list(fragments)
        )
    return lance.LanceDataset.commit(
        uri, op, read_version=expected_version, storage_options=storage_options, max_retries=0
    ).version


def delete_rows(uri: str, rowids: np.ndarray, storage_options: Optional[dict] = None, chunk: int = 10_000) -> None:
    """Delete rows by address (``_rowid``), in bounded-size predicates."""
    ds = _open(uri, storage_options)
    for start in range(0, len(rowids), chunk):
        ds.delete(f"_rowid IN {sql_list(int(r) for r in rowids[start : start + chunk])}")


def delete_run_leftovers(
    uri: str, run_id: str, files: Sequence[str], file_column: str, storage_options: Optional[dict] = None
) -> None:
    """Delete what run ``run_id`` committed from ``files`` before it died (they are about to be redone)."""
    ds = _open(uri, storage_options)
    if ds is None or not files:
        return
    for start in range(0, len(files), 500):
        part = files[start : start + 500]
        ds.delete(f"run_id = {sql_value(run_id)} AND {file_column} IN {sql_list(part)}")
