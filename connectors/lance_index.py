"""Vector index on the LanceDB table, with parameters derived from the data.

IVF-PQ: ``num_partitions`` about sqrt(rows), capped at rows / 256 (Lance trains fewer lists than asked
when they would get under 256 vectors each); ``num_sub_vectors`` = dimension / 8, i.e. 8 dimensions per
code byte, which keeps recall high for sentence embeddings, falling back to dimension / 16 or the
largest divisor of the dimension. PQ trains 256 centroids per sub-vector, so fewer than
``index.min_rows`` rows get no index: exact search over so few vectors is fast and exact.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

from pipelines.config import IndexConfig

__all__ = ["IndexParams", "build_index", "derive_index_params", "maintain_index"]


@dataclass
class IndexParams:
    type: str  # ivf_pq | ivf_hnsw_sq | none
    metric: str
    num_partitions: Optional[int] = None
    num_sub_vectors: Optional[int] = None
    nprobes: Optional[int] = None  # query defaults stored with the table
    refine_factor: Optional[int] = None
    reason: str = ""  # why no index, when type == none
    build_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _sub_vectors(dimension: int) -> int:
    for per_code in (8, 16):
        if dimension % per_code == 0 and dimension // per_code >= 1:
            return dimension // per_code
    divisors = [d for d in range(1, dimension + 1) if dimension % d == 0 and dimension // d >= 8]
    return max(divisors) if divisors else 1


def derive_index_params(rows: int, dimension: int, config: IndexConfig) -> IndexParams:
    """Index parameters for ``rows`` vectors of ``dimension``; explicit config values win."""
    if config.type == "none":
        return IndexParams("none", config.metric, reason="index.type=none")
    if rows < config.min_rows:
        return IndexParams("none", config.metric, reason=f"{rows} rows < index.min_rows={config.min_rows}")
    partitions = config.num_partitions
    if partitions == "auto":
        # Lance trains each list on at least 256 vectors, so never ask for more than rows / 256.
        partitions = max(1, min(round(math.sqrt(rows)), rows // 256))
    sub_vectors = config.num_sub_vectors
    if sub_vectors == "auto":
        sub_vectors = _sub_vectors(dimension)
    elif dimension % sub_vectors:
        raise ValueError(f"index.num_sub_vectors={sub_vectors} must divide the dimension {dimension}")
    nprobes = config.nprobes
    if nprobes == "auto":
        # About 10% of the lists, at least 20 (LanceDB's default), never more than there are.
        nprobes = min(partitions, max(20, math.ceil(partitions / 10)))
    return IndexParams(
        type=config.type,
        metric=config.metric,
        num_partitions=partitions,
        num_sub_vectors=sub_vectors if config.type == "ivf_pq" else None,
        nprobes=nprobes,
        refine_factor=config.refine_factor,
    )


def build_index(table, params: IndexParams, column: str = "vector") -> IndexParams:
    """Build (replace) the vector index on an open LanceDB table; returns params with the build time."""
    from lancedb.index import IvfHnswSq, IvfPq

    if params.type == "none":
        return params
    start = time.perf_counter()
    if params.type == "ivf_pq":
        config = IvfPq(
            distance_type=params.metric,
            num_partitions=params.num_partitions,
            num_sub_vectors=params.num_sub_vectors,
        )
    else:
        config = IvfHnswSq(distance_type=params.metric, num_partitions=params.num_partitions)
    table.create_index(column, config=config, replace=True)
    params.build_seconds = round(time.perf_counter() - start, 2)
    return params


def maintain_index(table, rows: int, dimension: int, config: IndexConfig, column: str = "vector") -> IndexParams:
    """After an append or upsert: keep the vector index useful without always retraining it.

    New rows are searchable at once either way (LanceDB scans unindexed rows exactly and merges them
    into the results). While unindexed rows are at most ``index.reindex_fraction`` of the indexed ones,
    ``optimize()`` adds them to the existing lists (cheap, no retraining); past that, the lists were
    trained on a distribution that no longer describes the table, so the index is rebuilt with
    parameters derived from the new size.
    """
    existing = [i for i in table.list_indices() if i.columns == [column]]
    if not existing:
        return build_index(table, derive_index_params(rows, dimension, config), column)
    stats = table.index_stats(existing[0].name)
    indexed = max(int(getattr(stats, "num_indexed_rows", 0) or 0), 1)
    unindexed = int(getattr(stats, "num_unindexed_rows", 0) or 0)
    params = derive_index_params(rows, dimension, config)
    if params.type == "none" or unindexed / indexed > config.reindex_fraction:
        return build_index(table, params, column)
    start = time.perf_counter()
    table.optimize()
    params.build_seconds = round(time.perf_counter() - start, 2)
    params.reason = f"optimized in place ({unindexed} new rows <= {config.reindex_fraction:.0%} of {indexed})"
    return params
