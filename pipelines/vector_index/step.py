"""Index step: the vector index, its tuned query defaults, the full-text index and the id index, as one
Ray task (which starts the build tasks of a distributed build, ``index.workers``).

:func:`index_step` is the one entry point: the indexing run calls it after the write, the evaluation
for each table and index type it measures. The task builds the index anew or, after an append or
upsert, keeps it useful (:func:`maintain_index`, the policy the maintenance job applies too), then
tunes the query defaults (:func:`tune_index`) and indexes the ids.

It runs after the write, on a Ray worker rather than in the driver: index training (the IVF sample
grows with the number of lists, about sqrt(rows)) and the tuning's exact searches take memory that
grows with the table, and the driver of a 100M-row job must stay small. The task reads the table
from the sink like any reader; nothing passes through the driver but the parameters it returns.

Tuning queries: real queries, when ``index.tuning_queries_path`` names a Parquet or JSON Lines
file with a ``text`` column (a BEIR ``queries.jsonl`` works as it is), are embedded here with the
table's model and query prompt (the same code the query job uses). Without them the tuning makes
pseudo-queries from sampled documents (:mod:`pipelines.vector_index.pseudo_queries`), needing no
model: documents themselves overstate the recall of real queries when they have near-copies
(chunks of one page, boilerplate), because the copies share a list with the query.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from connectors import columns as C
from connectors.lance.index import IndexParams, build_index, index_row_counts, optimize_index
from connectors.lance.table import create_id_index, open_table
from connectors.lance.text_index import keep_text_index
from connectors.query_files import QueryFileError, read_queries
from connectors.storage import Storage
from pipelines.config import ConfigError, IndexConfig, PipelineConfig
from pipelines.lineage import Lineage
from pipelines.run.tasks import task_result
from pipelines.vector_index.params import derive_index_params, index_workers
from pipelines.vector_index.tuning import TuningResult, tune_query_defaults

__all__ = [
    "check_tuning_queries",
    "index_step",
    "index_table",
    "maintain_index",
    "read_tuning_queries",
    "tune_index",
]

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


def index_step(
    config: PipelineConfig,
    *,
    rows: int,
    dimension: int,
    lineage: Lineage,
    storage: Optional[Storage] = None,
    incremental: bool = False,
) -> tuple[IndexParams, Optional[TuningResult], float]:
    """The vector index of ``config.sink.table`` (``rows`` rows of ``dimension``, made as ``lineage``
    says), its tuned query defaults and the id index, built in one Ray task; returns the index
    parameters, the tuning result (None when not tuned) and the seconds it took. Recording them in
    the lineage is the caller's (:func:`~pipelines.vector_index.tuning.index_lineage`).

    ``storage``: default resolved from ``config.storage`` for the sink, model and tuning queries.
    ``incremental``: maintain the index after an append/upsert instead of building it anew.
    """
    import ray

    if storage is None:
        storage = Storage.resolve(
            config.storage, paths=[config.sink.uri, config.model.path, config.index.tuning_queries_path]
        )
    # Off the driver: index training and the tuning's exact searches grow with the table.
    queries = None
    if config.index.tuning_queries_path and config.index.target_recall is not None:
        queries = read_tuning_queries(config.index.tuning_queries_path, config.index.tuning_queries, storage)
    # Retried when its worker or node is lost (nothing is committed until the build is done), never
    # on its own errors (Ray retries exceptions only when retry_exceptions is set).
    # A distributed build (index.workers) gives every CPU to its build tasks; the task that starts
    # them only trains on a sample and waits, so it holds none (else it could wait for its own CPU).
    cpus = ray.cluster_resources().get("CPU", 1)
    one_task = index_workers(config.index.workers, rows, cpus) == 1
    task = ray.remote(num_cpus=1 if one_task else 0, max_retries=3)(index_table)
    started = time.perf_counter()
    params, tuning = task_result(
        task.remote(
            config.sink.uri,
            config.sink.table,
            config.index,
            id_column=config.source.id_column,
            dimension=dimension,
            incremental=incremental,
            lineage=lineage,
            storage=storage,
            query_texts=queries,
            cpus=cpus,
        )
    )
    return params, tuning, round(time.perf_counter() - started, 2)


def index_table(
    uri: str,
    table_name: str,
    config: IndexConfig,
    *,
    id_column: str,
    dimension: int,
    incremental: bool,
    lineage: Lineage,
    storage: Storage,
    query_texts: Optional[list[str]] = None,
    cpus: Optional[float] = None,
) -> tuple[IndexParams, Optional[TuningResult]]:
    """Build (or, after an append/upsert, maintain) the vector index, tune its query defaults, build or
    update the full-text index (``index.fts``), index ids.

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
    if config.fts:  # after the tuning, which the full-text index does not touch
        text_column = lineage.source.text_column if lineage.source else "text"
        params.fts = keep_text_index(
            table,
            text_column,
            config.fts_options(),
            incremental=incremental,
            workers=params.workers,  # the vector index's tasks, when it has any (index.workers)
            storage_options=options,
        )
    create_id_index(table, id_column)
    return params, tuning


def maintain_index(
    table,
    rows: int,
    dimension: int,
    config: IndexConfig,
    column: str = C.VECTOR,
    cpus: Optional[float] = None,
    storage_options: Optional[dict] = None,
) -> IndexParams:
    """After an append or upsert: keep the vector index useful without always retraining it.

    New rows are searchable at once either way (LanceDB scans unindexed rows exactly and merges them
    into the results). While unindexed rows are at most ``index.reindex_fraction`` of the indexed ones,
    ``optimize()`` adds them to the existing lists (cheap, no retraining); past that, the lists were
    trained on a distribution that no longer describes the table, so the index is rebuilt with
    parameters derived from the new size.
    """
    params = derive_index_params(rows, dimension, config, cpus)
    counts = index_row_counts(table, column)
    if counts is None:
        return build_index(table, params, column, storage_options)
    indexed, unindexed = max(counts[0], 1), counts[1]
    if params.type == "none" or unindexed / indexed > config.reindex_fraction:
        return build_index(table, params, column, storage_options)
    params.build_seconds = optimize_index(table)
    params.reason = f"optimized in place ({unindexed} new rows <= {config.reindex_fraction:.0%} of {indexed})"
    return params


def tune_index(
    table,
    params: IndexParams,
    config: IndexConfig,
    *,
    id_column: str,
    rows: int,
    dimension: int,
    vectors: Optional[np.ndarray] = None,
    source: str = "given",
) -> Optional[TuningResult]:
    """Tune a built index when ``config.target_recall`` asks for it; the chosen defaults go into ``params``."""
    if params.type == "none" or config.target_recall is None:
        return None
    tuning = tune_query_defaults(
        table, params, config, id_column=id_column, rows=rows, dimension=dimension, vectors=vectors, source=source
    )
    params.nprobes, params.refine_factor = tuning.nprobes, tuning.refine_factor
    return tuning
