"""One row per document: after a run's last commit, its duplicate ids are resolved.

The reasoning behind it: docs/design.md, section connectors/lance/dedup.py.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from connectors import columns as C
from connectors.sql import sql_list, sql_value

__all__ = ["Removed", "drop_duplicate_ids", "duplicate_ids", "id_hashes"]


@dataclass
class Removed:
    """The rows the duplicate check removed: by reason, and how many of them (and of their documents)
    were metadata-only rewrites (an upsert's ``updated``, not embedded by the run)."""

    rows: Counter = field(default_factory=Counter)
    rewritten_rows: int = 0
    rewritten_docs: int = 0


def id_hashes(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash of each id (its string form)."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "little") for v in ids.to_pylist()],
        dtype=np.uint64,
    )


def _groups_of_hashes(h: np.ndarray, size: int):
    """Slices of the sorted hashes ``h`` of about ``size`` items that never split one hash."""
    start = 0
    while start < len(h):
        end = min(start + size, len(h))
        while end < len(h) and h[end] == h[end - 1]:
            end += 1
        yield slice(start, end)
        start = end


def _rank(value: Any) -> tuple:
    return (value is not None, value if value is not None else 0)


def _losers(rows: list[dict], key: str, id_column: str, revision: str, run_id: str) -> list[tuple[dict, str]]:
    """The rows of one document id that must go, each with its reason."""
    older = [r for r in rows if r[C.RUN_ID] != run_id]
    mine = sorted((r for r in rows if r[C.RUN_ID] == run_id), key=lambda r: r["_rowid"])
    if older:
        return [(r, "duplicate_id") for r in mine]
    best = max(_rank(r[revision]) for r in mine)
    first = next(r for r in mine if _rank(r[revision]) == best)
    out, kept = [], set()
    for r in mine:
        if _rank(r[revision]) < best:
            out.append((r, "superseded"))
        elif (r[C.SOURCE_FILE], r[C.HASH]) != (first[C.SOURCE_FILE], first[C.HASH]) or r[id_column] in kept:
            out.append((r, "duplicate_id"))
        else:
            kept.add(r[id_column])
    return out


def drop_duplicate_ids(
    uri: str,
    rejects_uri: str,
    *,
    key_column: str,
    id_column: str,
    text_column: str,
    run_id: str,
    revision_column: str = C.SOURCE_FILE,
    older_rows: bool = True,
    storage_options: Optional[dict] = None,
    rows_per_pass: int = 2_000_000,
    lookup_rows: int = 4096,
    rewritten_since: Optional[int] = None,
) -> Removed:
    """Resolve this run's duplicate ids (see the module docstring); returns the rows removed.

    ``key_column`` is the document id (``doc_id`` in a chunked table, else ``id_column``);
    ``older_rows`` False says no earlier run's rows can be in the table (first run, overwrite).
    ``rewritten_since``: an upsert's version of the table when it began; a removed row whose document
    had its content hash there was a metadata-only rewrite, counted apart (the run did not embed it).
    """
    import lance

    removed = Removed()
    try:
        ds = lance.dataset(uri, storage_options=storage_options)
    except (ValueError, OSError):
        return removed

    this_run = f"run_id = {sql_value(run_id)}"
    n = ds.count_rows(filter=this_run)
    passes = max(1, math.ceil(n / rows_per_pass))
    for part in range(passes):
        hashes, rowids, keys = _this_runs_hashes(ds, key_column, this_run, part, passes, older_rows)
        _add_older_rows_with_these_ids(ds, key_column, this_run, keys, lookup_rows, hashes, rowids)
        if not hashes:
            continue
        candidates, candidate_hashes = _rows_sharing_a_hash(hashes, rowids)
        if len(candidates) == 0:
            continue
        drop, reject_rows, losers = _losing_rows(
            ds, candidates, candidate_hashes, key_column, id_column, text_column, revision_column, run_id, removed.rows
        )
        if rewritten_since is not None and losers:
            _count_rewrites(ds, rewritten_since, key_column, losers, lookup_rows, removed)
        if drop:
            _reject_and_delete(uri, rejects_uri, drop, reject_rows, storage_options)
            ds = lance.dataset(uri, storage_options=storage_options)
    return removed


def _this_runs_hashes(ds, key_column: str, this_run: str, part: int, passes: int, older_rows: bool):
    """The id hashes and row ids of this run's rows in pass ``part``, and their ids when older rows may exist."""
    hashes, rowids = [], []
    keys: list = []
    for batch in ds.to_batches(columns=[key_column], filter=this_run, with_row_id=True):
        h = id_hashes(batch.column(key_column))
        mine = h % passes == part
        hashes.append(h[mine])
        rowids.append(batch.column("_rowid").to_numpy()[mine])
        if older_rows:
            keys.extend(v for v, m in zip(batch.column(key_column).to_pylist(), mine) if m)
    return hashes, rowids, keys


def _add_older_rows_with_these_ids(
    ds, key_column: str, this_run: str, keys: list, lookup_rows: int, hashes: list, rowids: list
) -> None:
    """Append to ``hashes`` and ``rowids`` the older runs' rows with one of this run's ids (``keys``)."""
    unique_keys = list(dict.fromkeys(keys))
    for start in range(0, len(unique_keys), lookup_rows):  # older rows with one of this run's ids
        older = ds.to_table(
            columns=[key_column],
            filter=f"{key_column} IN {sql_list(unique_keys[start : start + lookup_rows])} AND NOT ({this_run})",
            with_row_id=True,
        )
        if older.num_rows:
            hashes.append(id_hashes(older.column(key_column)))
            rowids.append(older.column("_rowid").to_numpy())


def _rows_sharing_a_hash(hashes: list, rowids: list) -> tuple[np.ndarray, np.ndarray]:
    """The row ids whose id hash occurs more than once, and their hashes, sorted by hash."""
    h, r = np.concatenate(hashes), np.concatenate(rowids).astype(np.uint64)
    order = np.argsort(h, kind="stable")
    h, r = h[order], r[order]
    dup_hash = np.unique(h[1:][h[1:] == h[:-1]])
    if len(dup_hash) == 0:
        return r[:0], h[:0]
    suspect = np.isin(h, dup_hash)
    return r[suspect], h[suspect]


def _losing_rows(
    ds,
    candidates: np.ndarray,
    candidate_hashes: np.ndarray,
    key_column: str,
    id_column: str,
    text_column: str,
    revision_column: str,
    run_id: str,
    removed: Counter,
) -> tuple[list, list[dict]]:
    """The row ids to delete among ``candidates``, their reject rows and ``{(document id, content hash):
    [rows, documents]}`` of this run's losers; counts each reason in ``removed``."""
    chunked = key_column != id_column  # a document is several rows, the first of them chunk 0
    columns = list(
        dict.fromkeys(
            [key_column, id_column, text_column, C.SOURCE_FILE, C.HASH, C.RUN_ID, revision_column]
            + ([C.CHUNK] if chunked else [])
        )
    )
    drop, reject_rows, losers = [], [], {}
    for piece in _groups_of_hashes(candidate_hashes, 10_000):  # all rows of an id in one piece
        rows = ds.to_table(
            columns=columns, with_row_id=True, filter=f"_rowid IN {sql_list(int(x) for x in candidates[piece])}"
        )
        groups: dict = {}
        for row in rows.to_pylist():
            groups.setdefault(row[key_column], []).append(row)
        for group in groups.values():
            for row, reason in _losers(group, key_column, id_column, revision_column, run_id):
                drop.append(row["_rowid"])
                removed[reason] += 1
                if row[C.RUN_ID] == run_id:
                    counts = losers.setdefault((row[key_column], row[C.HASH]), [0, 0])
                    counts[0] += 1
                    counts[1] += int(not chunked or row[C.CHUNK] == 0)
                reject_rows.append(
                    {
                        "id": str(row[id_column]),
                        "file": row[C.SOURCE_FILE],
                        "reason": reason,
                        "text": row[text_column],
                        "run_id": run_id,
                    }
                )
    return drop, reject_rows, losers


def _count_rewrites(ds, version: int, key_column: str, losers: dict, lookup_rows: int, removed: Removed) -> None:
    """Count in ``removed`` the ``losers`` (``{(document id, hash): [rows, documents]}``) that were metadata-only
    rewrites: every row of their document at ``version`` (when the upsert began) had their content
    hash, which is what made the run rewrite them instead of embedding them."""
    keys = list(dict.fromkeys(k for k, _ in losers))
    before: dict = {}
    old = ds.checkout_version(version)
    for start in range(0, len(keys), lookup_rows):
        rows = old.to_table(
            columns=[key_column, C.HASH], filter=f"{key_column} IN {sql_list(keys[start : start + lookup_rows])}"
        )
        for k, h in zip(rows.column(key_column).to_pylist(), rows.column(C.HASH).to_pylist()):
            before.setdefault(k, set()).add(h)
    for (k, h), (rows, docs) in losers.items():
        if before.get(k) == {h}:
            removed.rewritten_rows += rows
            removed.rewritten_docs += docs


def _reject_and_delete(
    uri: str, rejects_uri: str, drop: list, reject_rows: list[dict], storage_options: Optional[dict]
) -> None:
    """Write the losing rows to the rejects table, then delete them from the table."""
    import lance

    from connectors.lance.commits import delete_rows
    from connectors.lance.table import REJECT_SCHEMA

    rejects = pa.Table.from_pylist(reject_rows, schema=REJECT_SCHEMA)
    try:
        lance.dataset(rejects_uri, storage_options=storage_options)
        mode = "append"
    except (ValueError, OSError):
        mode = "create"
    lance.write_dataset(rejects, rejects_uri, mode=mode, storage_options=storage_options)
    delete_rows(uri, np.array(drop, dtype=np.uint64), storage_options)


def duplicate_ids(
    uri: str, id_column: str, storage_options: Optional[dict] = None, examples: int = 5
) -> tuple[int, list]:
    """Rows beyond the first of each id, and a few such ids.

    Two passes over the id column: 8 bytes per row (a 64-bit hash) find candidate ids, then their
    real values are compared, so a hash collision is never reported as a duplicate.
    """
    import lance

    ds = lance.dataset(uri, storage_options=storage_options)
    hashes = [id_hashes(b.column(id_column)) for b in ds.to_batches(columns=[id_column])]
    if not hashes:
        return 0, []
    h = np.sort(np.concatenate(hashes))
    suspects = np.unique(h[1:][h[1:] == h[:-1]])
    if len(suspects) == 0:
        return 0, []
    counts: Counter = Counter()
    for batch in ds.to_batches(columns=[id_column]):
        ids = batch.column(id_column)
        hit = np.isin(id_hashes(ids), suspects)
        counts.update(v for v, m in zip(ids.to_pylist(), hit) if m)
    dups = {k: n for k, n in counts.items() if n > 1}
    return sum(n - 1 for n in dups.values()), sorted(dups, key=str)[:examples]
