"""The vector index of a LanceDB table: build it, search it, exact neighbours, its size.

The parameters come from :mod:`pipelines.vector_index.params`.

The index holds quantised codes: RaBitQ codes of ``num_bits`` per dimension (IVF-RQ), PQ codes (one
byte per sub-vector, IVF-PQ) or int8 codes (one byte per dimension, IVF-SQ); the float vectors stay in
the table and a query's ``refine_factor`` re-scores its candidates against them.

With ``index.workers`` above 1 (default 1: LanceDB's ``create_index`` in one task), several Ray tasks
build the index: lance-ray trains the IVF centroids and PQ codebook once, on a sample of
``num_partitions * sample_rate`` vectors, then each task builds an index segment over its share of
the fragments with those shared centroids and codebooks, and the segments are committed together
as one index. No process holds more than the training sample
and its own fragments' vectors, and a query sees one index (LanceDB searches each segment, which
costs latency: docs/scaling.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from connectors import columns as C

__all__ = [
    "IndexParams",
    "build_index",
    "code_bytes",
    "exact_search",
    "index_row_counts",
    "index_size_bytes",
    "ivf_sample_rate",
    "optimize_index",
    "sample_vectors",
    "search_batch",
]

# IVF k-means trains on num_partitions * sample_rate vectors (Lance's default rate: 256). The rate
# shrinks for many lists so the sample, and the build's memory, stay near this many vectors; it never
# goes under MIN_SAMPLE_RATE vectors per list, below which centroids get noisy (FAISS warns under 39).
IVF_TRAINING_ROWS = 2**18
MIN_SAMPLE_RATE = 40


@dataclass
class IndexParams:
    type: str  # ivf_pq | ivf_sq | ivf_rq | ivf_hnsw_sq | none
    metric: str
    num_partitions: Optional[int] = None
    num_sub_vectors: Optional[int] = None  # ivf_pq
    num_bits: Optional[int] = None  # ivf_rq: RaBitQ bits per dimension
    nprobes: Optional[int] = None  # query defaults stored with the table
    refine_factor: Optional[int] = None
    reason: str = ""  # why no index, when type == none
    build_seconds: float = 0.0
    sample_rate: Optional[int] = None  # IVF training vectors per list
    workers: int = 1  # build tasks, one index segment each (lance-ray) when more than one
    fts: Optional[dict] = None  # the full-text index on the text column (connectors.lance.text_index), if any

    def to_dict(self) -> dict:
        return asdict(self)


def ivf_sample_rate(partitions: int) -> int:
    """Training vectors per IVF list: 256 up to 1024 lists, then fewer so the sample stays ~256k."""
    return max(MIN_SAMPLE_RATE, min(256, IVF_TRAINING_ROWS // max(1, partitions)))


def build_index(
    table, params: IndexParams, column: str = C.VECTOR, storage_options: Optional[dict] = None
) -> IndexParams:
    """Build (replace) the vector index on an open LanceDB table; returns params with the build time.

    ``params.workers`` > 1: lance-ray's distributed build, in as many Ray tasks (the caller runs in
    a Ray cluster), one index segment each; ``storage_options`` reach the tasks for an s3:// table."""
    if params.type == "none":
        return params
    start = time.perf_counter()
    if params.workers > 1:
        _build_distributed(table, params, column, storage_options)
    else:
        table.create_index(column, config=_lancedb_config(params), replace=True)
    params.build_seconds = round(time.perf_counter() - start, 2)
    return params


def _lancedb_config(params: IndexParams):
    from lancedb.index import IvfHnswSq, IvfPq, IvfRq, IvfSq

    ivf = dict(
        distance_type=params.metric,
        num_partitions=params.num_partitions,
        sample_rate=params.sample_rate or ivf_sample_rate(params.num_partitions or 1),
    )
    if params.type == "ivf_pq":
        return IvfPq(num_sub_vectors=params.num_sub_vectors, **ivf)
    if params.type == "ivf_sq":
        return IvfSq(**ivf)
    if params.type == "ivf_rq":
        return IvfRq(num_bits=params.num_bits or 1, **ivf)
    return IvfHnswSq(**ivf)


def _build_distributed(table, params: IndexParams, column: str, storage_options: Optional[dict]) -> None:
    import lance_ray

    extra = {"num_bits": params.num_bits or 1} if params.type == "ivf_rq" else {}
    sample_rate = params.sample_rate or ivf_sample_rate(params.num_partitions or 1)
    if params.type == "ivf_pq":  # lance-ray trains PQ on sample_rate * 256 vectors, so at most all rows
        sample_rate = max(1, min(sample_rate, table.count_rows() // 256))
    lance_ray.create_index(
        table.to_lance().uri,
        column=column,
        index_type=params.type.upper(),
        name=f"{column}_idx",
        replace=True,
        num_workers=params.workers,
        storage_options=storage_options or None,
        metric=params.metric,
        num_partitions=params.num_partitions,
        num_sub_vectors=params.num_sub_vectors if params.type == "ivf_pq" else None,
        sample_rate=sample_rate,
        ray_remote_args={"num_cpus": 1},
        **extra,
    )


def index_row_counts(table, column: str = C.VECTOR) -> Optional[tuple[int, int]]:
    """(indexed, unindexed) rows of the vector index on ``column``; None when there is no such index."""
    existing = [i for i in table.list_indices() if i.columns == [column]]
    if not existing:
        return None
    stats = table.index_stats(existing[0].name)
    return int(getattr(stats, "num_indexed_rows", 0) or 0), int(getattr(stats, "num_unindexed_rows", 0) or 0)


def optimize_index(table) -> float:
    """Compact the table's small fragments and add its unindexed rows to the existing indices (no
    retraining); seconds. Nothing is pruned.

    Not LanceDB's ``table.optimize()``: that also prunes versions older than 7 days and, with them,
    every unreferenced file older than 7 days, which includes the staged fragments of an overwrite
    run that was stopped and not yet resumed (its resume would then commit files that are gone).
    Pruning is ``jobs.maintain``'s, by ``sink.keep_versions`` (:mod:`connectors.lance.housekeeping`).
    """
    start = time.perf_counter()
    dataset = table.to_lance()
    dataset.optimize.compact_files()
    dataset.optimize.optimize_indices()
    table.checkout_latest()  # the LanceDB handle still points at the version before these commits
    return round(time.perf_counter() - start, 2)


def code_bytes(
    index_type: str,
    dimension: int,
    num_sub_vectors: Optional[int] = None,
    vector_bytes: int = 4,
    num_bits: Optional[int] = None,
) -> float:
    """Bytes per vector that a search scans: the index's codes, or the stored vector without an index.

    PQ: one byte per sub-vector (8-bit codes); SQ and HNSW-SQ: one byte per dimension; RQ: ``num_bits``
    per dimension (1 when not given). Row ids, codebooks and RaBitQ's per-vector factors come on top (see
    :func:`index_size_bytes` for what is actually on disk).
    """
    if index_type == "ivf_pq":
        return float(num_sub_vectors)
    if index_type in ("ivf_sq", "ivf_hnsw_sq"):
        return float(dimension)
    if index_type == "ivf_rq":
        return dimension * (num_bits or 1) / 8
    return float(dimension * vector_bytes)


def index_size_bytes(table, column: str = C.VECTOR) -> Optional[int]:
    """On-disk size of the vector index on ``column`` (codes, row ids, centroids, codebooks)."""
    for index in table.list_indices():
        if list(index.columns) == [column]:
            return getattr(index, "size_bytes", None)
    return None


def sample_vectors(table, n: int, id_column: str, seed: int = 0, column: str = C.VECTOR):
    """``n`` rows drawn uniformly without replacement (seeded): (ids, float32 vectors)."""
    dataset = table.to_lance()
    rows = dataset.count_rows()
    picks = np.sort(np.random.default_rng(seed).choice(rows, size=min(n, rows), replace=False))
    taken = dataset.take(picks.tolist(), columns=[id_column, column])
    vectors = np.asarray(taken.column(column).to_pylist(), dtype=np.float32)
    return taken.column(id_column).to_pylist(), vectors


def exact_search(
    table, vectors: np.ndarray, k: int, *, metric: str, id_column: str, column: str = C.VECTOR, batch_rows: int = 65536
) -> list[list]:
    """Exact top-``k`` ids for every query vector, best first, in one streamed read of the table.

    LanceDB's flat search scans the table once per query vector; this reads each batch of rows once
    for all the queries (one matrix product per batch, a running top-k per query), so the cost is one
    scan of the vector column whatever the number of queries, and memory is queries x batch_rows."""
    queries = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    best = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.empty((len(queries), 0), dtype=object)
    for batch in table.to_lance().to_batches(columns=[id_column, column], batch_size=batch_rows):
        if batch.num_rows == 0:
            continue
        flat = batch.column(column).flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        base = flat.reshape(batch.num_rows, -1)
        if metric == "cosine":
            scores = queries @ (base / np.maximum(np.linalg.norm(base, axis=1, keepdims=True), 1e-12)).T
        elif metric == "dot":
            scores = queries @ base.T
        else:  # l2, as a score: larger is nearer
            scores = 2 * queries @ base.T - (base * base).sum(axis=1)[None, :]
        ids = np.asarray(batch.column(id_column).to_numpy(zero_copy_only=False), dtype=object)
        width = best.shape[1]
        merged = np.concatenate([best, scores], axis=1)
        if merged.shape[1] > k:
            keep = np.argpartition(-merged, k - 1, axis=1)[:, :k]
        else:
            keep = np.tile(np.arange(merged.shape[1]), (len(queries), 1))
        old = np.take_along_axis(best_ids, np.clip(keep, 0, max(width - 1, 0)), axis=1) if width else None
        new = ids[np.clip(keep - width, 0, None)]
        best_ids = new if old is None else np.where(keep < width, old, new)
        best = np.take_along_axis(merged, keep, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1).tolist()


def search_batch(
    table,
    vectors: np.ndarray,
    k: int,
    *,
    metric: str,
    id_column: str,
    exact: bool = False,
    nprobes: Optional[int] = None,
    refine_factor: Optional[int] = None,
    column: str = C.VECTOR,
) -> list[list]:
    """Top-``k`` ids for each query vector, best first, in one LanceDB call.

    ``exact`` scans every stored vector (flat search, the ground truth); otherwise the index is
    searched with ``nprobes`` lists and ``refine_factor`` re-scoring against the float vectors.
    """
    query = table.search(list(np.asarray(vectors, dtype=np.float32)), vector_column_name=column)
    query = query.distance_type(metric).limit(k).select([id_column, "_distance"])
    if exact:
        query = query.bypass_vector_index()
    else:
        if nprobes:
            query = query.nprobes(nprobes)
        if refine_factor:
            query = query.refine_factor(refine_factor)
    hits = query.to_arrow()
    out: list[list] = [[] for _ in range(len(vectors))]
    # One query vector comes back without a query_index column.
    qidx = (
        hits.column(C.QUERY_INDEX).to_numpy()
        if C.QUERY_INDEX in hits.column_names
        else np.zeros(hits.num_rows, dtype=np.int64)
    )
    order = np.lexsort((hits.column("_distance").to_numpy(), qidx))
    ids = hits.column(id_column).to_pylist()
    for i in order:
        out[int(qidx[i])].append(ids[i])
    return out
