"""The full-text index of a LanceDB table: an inverted (BM25) index on its text column, built and kept current.

Lance answers no text query (``full_text_query``, LanceDB's ``query_type="fts"`` or ``"hybrid"``) without
an inverted index on the column, so every table gets one when ``index.fts`` is on, small tables too. Rows
written after the index (an append or upsert before the index step, a concurrent writer) are still found:
Lance searches unindexed rows with the same scorer and merges them in; the index step adds them to the
index (``optimize_indices``) so that they stop costing a scan.

Built with Lance's native inverted index (``use_tantivy=False``): it lives in the table's directory
(local or ``s3://``) and is versioned with the table, like the vector index.

With ``workers`` above 1 (the index step passes ``index.workers``' tasks, as for the vector index),
lance-ray builds it in that many Ray tasks, one index segment each over its share of the fragments,
committed as one index named ``{column}_idx`` as LanceDB names it; BM25 statistics cover all segments,
so a query scores and ranks as on a one-task index. Lance's inverted-index options have LanceDB's names
(``base_tokenizer``, ``stem``, ...), so one options dict serves both builds; an incremental run adds new
rows to a segmented index with ``optimize_indices`` as to any other.
"""

from __future__ import annotations

import time
from typing import Optional

__all__ = ["keep_text_index", "text_index_of"]


def text_index_of(table, column: str):
    """The table's full-text index on ``column`` (LanceDB's IndexConfig), or None."""
    for index in table.list_indices():
        if list(index.columns) == [column] and str(index.index_type).upper() in ("FTS", "INVERTED"):
            return index
    return None


def keep_text_index(
    table,
    column: str,
    options: dict,
    *,
    incremental: bool,
    workers: int = 1,
    storage_options: Optional[dict] = None,
) -> dict:
    """Build the full-text index on ``column`` or, after an append or upsert, add the new rows to it.

    ``options``: Lance's inverted-index options (``language``, ``stem``, ``remove_stop_words``, ...).
    A table whose index was made with other options gets a new one. ``workers`` > 1: a build runs in
    that many Ray tasks (lance-ray; the caller runs in a Ray cluster), ``storage_options`` reaching
    them for an s3:// table. Returns what the lineage records: column, options, how (``built`` or
    ``updated``), the tasks that did it, seconds and the rows indexed.
    """
    start = time.perf_counter()
    existing = text_index_of(table, column) if incremental else None
    if existing is not None and _same_options(existing, options):
        dataset = table.to_lance()
        dataset.optimize.optimize_indices(index_names=[existing.name])
        table.checkout_latest()  # the LanceDB handle still points at the version before this commit
        how = "updated"
    elif workers > 1:
        _build_distributed(table, column, options, workers, storage_options)
        how = "built"
    else:
        table.create_fts_index(column, replace=True, use_tantivy=False, **options)
        how = "built"
    return {
        "column": column,
        "options": dict(options),
        "how": how,
        "workers": workers if how == "built" else 1,
        "seconds": round(time.perf_counter() - start, 2),
        "rows": _indexed_rows(table, column),
    }


def _build_distributed(table, column: str, options: dict, workers: int, storage_options: Optional[dict]) -> None:
    import lance_ray

    lance_ray.create_scalar_index(
        table.to_lance().uri,
        column=column,
        index_type="INVERTED",
        name=f"{column}_idx",  # LanceDB's name, which text_index_of and optimize_indices find alike
        replace=True,
        num_workers=workers,
        storage_options=storage_options or None,
        ray_remote_args={"num_cpus": 1},
        **options,
    )
    table.checkout_latest()  # the LanceDB handle still points at the version before this commit


def _same_options(index, options: dict) -> bool:
    details = getattr(index, "index_details", None) or {}
    return all(details.get(key, value) == value for key, value in options.items())


def _indexed_rows(table, column: str) -> Optional[int]:
    index = text_index_of(table, column)
    if index is None:
        return None
    return getattr(table.index_stats(index.name), "num_indexed_rows", None)
