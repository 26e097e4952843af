"""Compaction and version pruning of the Lance datasets that scheduled runs keep committing to.

The reasoning behind it: docs/design.md, section connectors/lance/housekeeping.py.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Optional

from connectors import columns as C

__all__ = [
    "TARGET_ROWS_PER_FRAGMENT",
    "Housekeeping",
    "compact_and_prune",
    "index_built_on",
    "versions_to_retain",
]

TARGET_ROWS_PER_FRAGMENT = 1024 * 1024  # Lance's own default: few fragments, files of a manageable size


@dataclass
class Housekeeping:
    """What compaction and pruning did to one dataset (``exists=False``: there is no such dataset)."""

    table: str
    exists: bool = True
    rows: int = 0
    fragments_before: int = 0
    fragments_after: int = 0
    versions_before: int = 0
    versions_after: int = 0
    versions_removed: int = 0
    bytes_freed: int = 0
    pruned: bool = False  # False: keep is None (never prune)
    index_version: Optional[int] = None  # the version the vector index was built on (kept)

    def format(self) -> str:
        if not self.exists:
            return f"{self.table}: no such table"
        pruned = f"{self.versions_removed} removed, {_size(self.bytes_freed)} freed" if self.pruned else "not pruned"
        kept = f", index built on v{self.index_version}" if self.index_version is not None else ""
        return (
            f"{self.table}: fragments {self.fragments_before} -> {self.fragments_after}, "
            f"versions {self.versions_before} -> {self.versions_after} ({pruned}{kept})"
        )


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


def index_built_on(ds, column: str = C.VECTOR) -> Optional[int]:
    """The dataset version the vector index on ``column`` was built on (its oldest segment's), or None."""
    versions = [
        int(s.dataset_version_at_last_update)
        for d in ds.describe_indices()
        if list(d.field_names) == [column]
        for s in d.segments
    ]
    return min(versions) if versions else None


def versions_to_retain(ds, protect: Optional[int]) -> Optional[int]:
    """``retain_versions`` that keeps version ``protect`` and every newer one (None: no such version).

    Lance prunes a version only when it is older than ``older_than`` *and* not among the last
    ``retain_versions``, so this holds whatever ``keep`` is, and needs no clock.
    """
    return None if protect is None else max(ds.latest_version - protect + 1, 1)


def compact_and_prune(
    uri: str,
    keep: Optional[_dt.timedelta],
    storage_options: Optional[dict] = None,
    target_rows_per_fragment: int = TARGET_ROWS_PER_FRAGMENT,
) -> Housekeeping:
    """Compact dataset ``uri`` (``<db>/<name>.lance``), then prune its versions older than ``keep``.

    ``keep=None`` prunes nothing: the files compaction replaced stay, reachable by time travel.
    The caller must hold the table's lease (see the module docstring). Never deletes unverified
    files (uncommitted fragments of a running or resumable job).
    """
    import lance

    name = uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".lance")
    try:
        ds = lance.dataset(uri, storage_options=storage_options)
    except (ValueError, OSError, FileNotFoundError):
        return Housekeeping(table=name, exists=False)
    out = Housekeeping(table=name, fragments_before=len(ds.get_fragments()), versions_before=len(ds.versions()))
    ds.optimize.compact_files(target_rows_per_fragment=target_rows_per_fragment)
    ds = lance.dataset(uri, storage_options=storage_options)
    out.index_version = index_built_on(ds)
    if keep is not None:
        stats = ds.cleanup_old_versions(
            older_than=keep,
            retain_versions=versions_to_retain(ds, out.index_version),
            delete_unverified=False,
            error_if_tagged_old_versions=False,
        )
        out.pruned, out.versions_removed, out.bytes_freed = True, int(stats.old_versions), int(stats.bytes_removed)
        ds = lance.dataset(uri, storage_options=storage_options)
    out.rows, out.fragments_after, out.versions_after = ds.count_rows(), len(ds.get_fragments()), len(ds.versions())
    return out
