"""Commits the driver makes: a checkpoint's fragments and replaced rows at once, an overwrite, deletes."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from connectors.errors import RunError
from connectors.lance.table import _open
from connectors.sql import sql_list, sql_value

__all__ = [
    "ConcurrentWriteError",
    "MissingFilesError",
    "check_version",
    "commit_checkpoint",
    "commit_overwrite",
    "delete_rows",
    "delete_run_leftovers",
    "missing_files",
    "require_files",
]


class ConcurrentWriteError(RunError):
    """The table changed under a running job (another writer): the job stops before committing."""


class MissingFilesError(ConcurrentWriteError):
    """Data files a commit would reference are gone (removed by housekeeping, or by hand)."""


def missing_files(uri: str, fragments: Sequence[Any], storage=None, threads: int = 16) -> list[str]:
    """The data files of ``fragments`` (Lance ``FragmentMetadata`` written for dataset ``uri``) that
    are not in storage. ``storage``: a :class:`connectors.storage.Storage` for an ``s3://`` uri."""
    from concurrent.futures import ThreadPoolExecutor

    from connectors.storage import Storage

    paths = sorted({f.path for fragment in fragments for f in fragment.files})
    if not paths:
        return []
    fs, root = (storage or Storage.resolve()).fsspec(uri)
    full = [f"{root.rstrip('/')}/data/{p}" for p in paths]
    with ThreadPoolExecutor(min(threads, len(full))) as pool:  # one HEAD each on object storage
        there = list(pool.map(fs.exists, full))
    return [p for p, ok in zip(paths, there) if not ok]


def require_files(uri: str, fragments: Sequence[Any], what: str, storage=None) -> None:
    """Raise :class:`MissingFilesError` when a data file of ``fragments`` is gone: a commit must never
    reference a file that is not there (every reader of that version would fail)."""
    gone = missing_files(uri, fragments, storage)
    if gone:
        raise MissingFilesError(
            f"{what}: {len(gone)} data file(s) this commit would reference are gone, e.g. {gone[:3]} "
            "(removed by housekeeping, or by hand); nothing was committed"
        )


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
    emptied: Optional[set] = None,
) -> Optional[int]:
    """Add ``fragments`` and delete the rows at ``replaced_rowids`` in ONE commit; the new version.

    The rows an upsert replaces are deleted by address (fragment id << 32 | offset), as found when
    the run began, in the same transaction that adds their new rows: readers never see a document
    twice or not at all. The commit is made only if the table is still at ``expected_version`` (the
    version this run last saw): another writer's commit, e.g. a compaction that moved rows to new
    addresses, stops the run (:class:`ConcurrentWriteError`) instead of deleting the wrong rows. Lance's
    own conflict check (``read_version``) covers the moment between that check and the commit.

    ``emptied``: the fragments this run's earlier commits removed (every row deleted), updated with
    this commit's. An address there was replaced already (two rows of one id in one revision, in two
    checkpoints, both replace the row the id had): nothing is left to delete, where a fragment gone
    otherwise means another writer.
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
            if fragment is None and emptied is not None and fid in emptied:
                continue
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
    version = lance.LanceDataset.commit(
        uri, op, read_version=expected_version, storage_options=storage_options, max_retries=0
    ).version
    if emptied is not None and len(replaced_rowids):
        emptied.update(removed)
    return version


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
