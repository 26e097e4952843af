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

import datetime as _dt
import hashlib
import json
import pickle
from collections import Counter
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import columns as C

__all__ = [
    "LINEAGE_KEY",
    "REJECT_SCHEMA",
    "ExistingRows",
    "FragmentWriter",
    "RunLog",
    "SinkError",
    "commit_fragments",
    "dataset_uri",
    "rejects_table",
    "delete_rows",
    "delete_run_leftovers",
    "drop_duplicate_ids",
    "read_lineage",
    "sql_list",
    "table_version",
    "write_lineage",
]

LINEAGE_KEY = "embedpipe.lineage"
REJECT_SCHEMA = pa.schema(
    [("id", pa.string()), ("file", pa.string()), ("reason", pa.string()), ("text", pa.string()),
     ("run_id", pa.string())]
)
RUNS_SCHEMA = pa.schema(
    [("run_id", pa.string()), ("file", pa.string()), ("rows", pa.int64()), ("at", pa.string())]
)
STATS_SCHEMA = pa.schema(
    [
        ("rows", pa.int64()),  # source rows (documents) in this batch
        ("written", pa.int64()),  # table rows written (chunks when chunking)
        ("skipped", pa.int64()),  # unchanged documents an upsert left alone
        ("rejected", pa.string()),  # JSON {reason: count}
        ("files", pa.string()),  # JSON {source file: source rows in this batch}
        ("tokens", pa.int64()),
        ("truncated", pa.int64()),
        ("fragments", pa.binary()),  # pickled list[FragmentMetadata]
        ("reject_fragments", pa.binary()),
        ("replaced_rowids", pa.binary()),  # upsert: uint64 addresses of superseded rows
    ]
)
_START = "*started*"  # RunLog marker: the run committed (or may have committed) something


class SinkError(ValueError):
    """The sink cannot be written as configured (table exists, lineage differs, ...)."""


def rejects_table(table: str) -> str:
    """The name of the table that keeps ``table``'s rejected rows."""
    return table + "_rejects"


def dataset_uri(db_uri: str, table: str) -> str:
    """Where LanceDB keeps table ``table`` of database ``db_uri``."""
    return f"{db_uri.rstrip('/')}/{table}.lance"


def sql_list(values: Iterable[Any]) -> str:
    """A SQL ``IN`` list; strings are quoted with embedded quotes doubled (no injection)."""
    out = []
    for v in values:
        if isinstance(v, str):
            out.append("'" + v.replace("'", "''") + "'")
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(str(int(v)))
        else:
            raise TypeError(f"cannot use {type(v).__name__} value {v!r} in a filter")
    return "(" + ", ".join(out) + ")"


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
        raise SinkError(f"table {table!r} in {db_uri} has no {LINEAGE_KEY} metadata: "
                        "it was not written by this pipeline")
    return json.loads(raw)


def write_lineage(db_uri: str, table: str, lineage: dict, storage_options: Optional[dict] = None) -> None:
    ds = _open(dataset_uri(db_uri, table), storage_options)
    ds.update_schema_metadata({LINEAGE_KEY: json.dumps(lineage, sort_keys=True)})


class ExistingRows:
    """Upsert lookups: ``id -> (content_hash, row address)`` in the table as it was when the run began."""

    def __init__(self, uri: str, version: int, id_column: str, storage_options: Optional[dict] = None):
        self.uri, self.version, self.id_column = uri, version, id_column
        self.storage_options = storage_options
        self._ds = None

    def lookup(self, ids: Sequence[Any]) -> dict:
        if not ids:
            return {}
        if self._ds is None:
            self._ds = _open(self.uri, self.storage_options, self.version)
        found = self._ds.to_table(
            columns=[self.id_column, C.HASH],
            filter=f"{self.id_column} IN {sql_list(ids)}",
            with_row_id=True,
        )
        return {
            i: (h, r)
            for i, h, r in zip(
                found.column(self.id_column).to_pylist(),
                found.column(C.HASH).to_pylist(),
                found.column("_rowid").to_pylist(),
            )
        }


class FragmentWriter:
    """Final stage: writes accepted rows and rejects as uncommitted Lance fragments; returns counts."""

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

    def _write(self, table: pa.Table, uri: str) -> list:
        from lance.fragment import write_fragments

        if table.num_rows == 0:
            return []
        return write_fragments(table, uri, schema=table.schema, storage_options=self.storage_options)

    def __call__(self, batch: pa.Table) -> pa.Table:
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
        is_doc = (pc.fill_null(pc.equal(batch.column("chunk"), 0), True) if "chunk" in batch.column_names
                  else pa.array(np.ones(n, dtype=bool)))
        files = Counter(f for f, d in zip(batch.column(C.FILE).to_pylist(), is_doc.to_pylist()) if d)
        replaced = np.zeros(0, dtype=np.uint64)
        if C.OLD_ROWID in accepted.column_names:
            replaced = accepted.column(C.OLD_ROWID).drop_null().to_numpy().astype(np.uint64)
        stats = {
            "rows": [int(pc.sum(pc.cast(is_doc, pa.int64())).as_py() or 0)],
            "written": [rows.num_rows],
            "skipped": [int(pc.sum(pc.cast(unchanged, pa.int64())).as_py() or 0)],
            "rejected": [json.dumps(Counter(rejected.column(C.REJECT).to_pylist()))],
            "files": [json.dumps(files)],
            "tokens": [pc.sum(batch.column(C.N_TOKENS)).as_py() or 0],
            "truncated": [pc.sum(pc.cast(batch.column(C.TRUNCATED), pa.int64())).as_py() or 0],
            "fragments": [pickle.dumps(self._write(rows, self.table_uri))],
            "reject_fragments": [pickle.dumps(self._write(rejects, self.rejects_uri))],
            "replaced_rowids": [replaced.tobytes()],
        }
        return pa.table(stats, schema=STATS_SCHEMA)


def commit_fragments(
    uri: str,
    schema: pa.Schema,
    fragments: Sequence[Any],
    overwrite: bool,
    storage_options: Optional[dict] = None,
) -> int:
    """Make written fragments visible in one atomic commit; returns the new version.

    ``overwrite`` replaces the dataset's content (or creates it); otherwise the fragments are
    appended to the latest version (creating the dataset when there is none).
    """
    import lance

    existing = _open(uri, storage_options)
    if overwrite or existing is None:
        op = lance.LanceOperation.Overwrite(schema, list(fragments))
        read_version = None
    else:
        op = lance.LanceOperation.Append(list(fragments))
        read_version = existing.version
    ds = lance.LanceDataset.commit(uri, op, read_version=read_version, storage_options=storage_options)
    return ds.version


def delete_rows(uri: str, rowids: np.ndarray, storage_options: Optional[dict] = None, chunk: int = 10_000) -> None:
    """Delete rows by address (``_rowid``), in bounded-size predicates."""
    ds = _open(uri, storage_options)
    for start in range(0, len(rowids), chunk):
        ds.delete(f"_rowid IN {sql_list(int(r) for r in rowids[start:start + chunk])}")


def delete_run_leftovers(
    uri: str, run_id: str, files: Sequence[str], file_column: str, storage_options: Optional[dict] = None
) -> None:
    """Delete what run ``run_id`` committed from ``files`` before it died (they are about to be redone)."""
    ds = _open(uri, storage_options)
    if ds is None or not files:
        return
    for start in range(0, len(files), 500):
        part = files[start:start + 500]
        ds.delete(f"run_id = {sql_list([run_id])[1:-1]} AND {file_column} IN {sql_list(part)}")


class RunLog:
    """``<table>_runs``: one row per input file a run finished (committed), plus a start marker."""

    def __init__(self, db_uri: str, table: str, storage_options: Optional[dict] = None):
        self.uri = dataset_uri(db_uri, table + "_runs")
        self.storage_options = storage_options

    def _rows(self, run_id: str) -> pa.Table:
        ds = _open(self.uri, self.storage_options)
        if ds is None:
            return RUNS_SCHEMA.empty_table()
        return ds.to_table(filter=f"run_id = {sql_list([run_id])[1:-1]}")

    def started(self, run_id: str) -> bool:
        return _START in self._rows(run_id).column("file").to_pylist()

    def done_files(self, run_id: str) -> dict[str, int]:
        rows = self._rows(run_id)
        return {f: n for f, n in zip(rows.column("file").to_pylist(), rows.column("rows").to_pylist()) if f != _START}

    def record(self, run_id: str, files: dict[str, int]) -> None:
        import lance

        if not files:
            return
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        data = pa.table({"run_id": [run_id] * len(files), "file": list(files), "rows": list(files.values()),
                         "at": [now] * len(files)}, schema=RUNS_SCHEMA)
        mode = "append" if _open(self.uri, self.storage_options) is not None else "create"
        lance.write_dataset(data, self.uri, mode=mode, storage_options=self.storage_options)

    def mark_started(self, run_id: str) -> None:
        if not self.started(run_id):
            self.record(run_id, {_START: 0})


def _id_hashes(ids: pa.Array) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little")
                     for v in ids.to_pylist()], dtype=np.uint64)


def drop_duplicate_ids(
    uri: str, rejects_uri: str, id_column: str, text_column: str, run_id: str,
    storage_options: Optional[dict] = None, lookup_rows: int = 4096,
) -> int:
    """Keep the first-written row of each id (lowest row address); move the others to the rejects.

    Only ids this run wrote can be duplicated now (earlier runs were checked when they ran), so the
    work is bounded by the run, not the table: this run's rows are scanned (``run_id`` filter),
    and older rows sharing their ids are found by ``id IN (...)`` lookups, which the BTREE index on
    the id column answers. Memory: 16 bytes per row of this run (a 64-bit hash of the id and the
    row address); rows are compared by their real id, so a hash collision never drops a document.
    """
    import lance

    ds = _open(uri, storage_options)
    if ds is None:
        return 0
    this_run = f"run_id = {sql_list([run_id])[1:-1]}"
    hashes, rowids, ids = [], [], []
    for batch in ds.to_batches(columns=[id_column], filter=this_run, with_row_id=True):
        hashes.append(_id_hashes(batch.column(id_column)))
        rowids.append(batch.column("_rowid").to_numpy())
        ids.append(batch.column(id_column))
    if not hashes:
        return 0
    run_ids = pa.chunked_array(ids).unique()
    for start in range(0, len(run_ids), lookup_rows):  # older rows with one of this run's ids
        part = run_ids.slice(start, lookup_rows).to_pylist()
        older = ds.to_table(columns=[id_column], filter=f"{id_column} IN {sql_list(part)} AND NOT ({this_run})",
                            with_row_id=True)
        if older.num_rows:
            hashes.append(_id_hashes(older.column(id_column)))
            rowids.append(older.column("_rowid").to_numpy())
    h, r = np.concatenate(hashes), np.concatenate(rowids).astype(np.uint64)
    order = np.lexsort((r, h))
    h, r = h[order], r[order]
    dup_hash = np.unique(h[1:][h[1:] == h[:-1]])
    if len(dup_hash) == 0:
        return 0
    candidates = r[np.isin(h, dup_hash)]
    rows = ds.to_table(columns=[id_column, text_column, C.SOURCE_FILE],
                       filter=f"_rowid IN {sql_list(int(x) for x in candidates)}", with_row_id=True)
    seen, drop, reject_rows = set(), [], []
    for row in sorted(rows.to_pylist(), key=lambda x: x["_rowid"]):
        if row[id_column] in seen:
            drop.append(row["_rowid"])
            reject_rows.append({"id": str(row[id_column]), "file": row[C.SOURCE_FILE], "reason": "duplicate_id",
                                "text": row[text_column], "run_id": run_id})
        seen.add(row[id_column])
    if drop:
        rejects = pa.Table.from_pylist(reject_rows, schema=REJECT_SCHEMA)
        mode = "append" if _open(rejects_uri, storage_options) is not None else "create"
        lance.write_dataset(rejects, rejects_uri, mode=mode, storage_options=storage_options)
        delete_rows(uri, np.array(drop, dtype=np.uint64), storage_options)
    return len(drop)
