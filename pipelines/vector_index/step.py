"""Index step: the vector index, its tuned query defaults and the id index, as one Ray task (which
starts the build tasks of a distributed build, ``index.workers``).

It runs after the write, on a Ray worker rather than in the driver: index training (the IVF sample
grows with the number of lists, about sqrt(rows)) and the tuning's exact searches take memory that
grows with the table, and the driver of a 100M-row job must stay small. The task reads the table
from the sink like any reader; nothing passes through the driver but the parameters it returns.

Tuning queries: real queries, when ``index.tuning_queries_path`` names a Parquet or JSON Lines
file with a ``text`` column (a BEIR ``queries.jsonl`` works as it is), are embedded here with the
table's model and query prompt (the same code the query job uses). Without them, documents from
the table stand in for queries; they overstate the recall of real queries when documents have
near-copies (chunks of one page, boilerplate), because the copies share a list with the query.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from connectors.lance.index import IndexParams, build_index
from connectors.lance.table import create_id_index, open_table
from connectors.query_files import QueryFileError, read_queries
from connectors.storage import Storage
from pipelines.config import ConfigError, IndexConfig
from pipelines.vector_index.params import derive_index_params, maintain_index
from pipelines.vector_index.tuning import TuningResult, tune_index

__all__ = ["check_tuning_queries", "index_table", "read_tuning_queries"]

QUERY_COLUMN = "text"


def _query_texts(path: str, storage: Storage) -> list[str]:
    try:
        return [text for _, text in read_queries(path, storage)]
    except QueryFileError as exc:
        raise ConfigError(f"index.tuning_queries_path={exc}") from exc


def check_tuning_queries(path: str, storage: Storage) -> None:
    """Before any work: the query file exists, is Parquet or JSON Lines and has a ``text`` column."""
    _query_texts(path, storage)


def read_tuning_queries(path: str, limit: int, storage: Storage, seed: int = 0) -> list[str]:
    """Up to ``limit`` non-empty query texts from ``path``, sampled (seeded) when there are more."""
    texts = [t for t in _query_texts(path, storage) if t and t.strip()]
    if not texts:
        raise ConfigError(f"index.tuning_queries_path={path}: no non-empty {QUERY_COLUMN!r} values")
    if len(texts) > limit:
        picks = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
        texts = [texts[i] for i in picks]
    return texts


def index_table(
    uri: str,
    table_name: str,
    config: IndexConfig,
    *,
    id_column: str,
    dimension: int,
    incremental: bool,
    lineage: dict,
    storage: Storage,
    query_texts: Optional[list[str]] = None,
    cpus: Optional[float] = None,
) -> tuple[IndexParams, Optional[TuningResult]]:
    """Build (or, after an append/upsert, maintain) the vector index, tune its query defaults, index ids.

    ``query_texts``: real queries to tune on (the driver reads them with :func:`read_tuning_queries`,
    so a relative path means the same file wherever the task runs); None: documents stand in.
    ``cpus``: the cluster's, for ``index.workers=auto``.

    Returns the index parameters, carrying the chosen ``nprobes``/``refine_factor``, and the tuning
    result (None when nothing was tuned).
    """
    options = storage.lance_options(uri)
    table = open_table(uri, table_name, options)
    rows = table.count_rows()
    if incremental:
        params = maintain_index(table, rows, dimension, config, cpus=cpus, storage_options=options)
    else:
        params = build_index(table, derive_index_params(rows, dimension, config, cpus), storage_options=options)
    vectors = None
    if query_texts and params.type != "none" and config.target_recall is not None:
        from pipelines.search.searcher import Searcher

        vectors = Searcher(table, lineage, storage=storage).embed_queries(query_texts)
    tuning = tune_index(
        table,
        params,
        config,
        id_column=id_column,
        rows=rows,
        dimension=dimension,
        vectors=vectors,
        source=f"queries from {config.tuning_queries_path}",
    )
    create_id_index(table, id_column)
    return params, tuning
