"""Index parameters from the data and the config (the index step that uses them: :mod:`pipelines.vector_index.step`).

``num_partitions`` about sqrt(rows), capped at rows / 256 (Lance trains fewer lists than asked when
they would get under 256 vectors each). IVF-RQ (the default): ``num_bits`` = 4 bits per dimension,
which reached recall 0.95 at a third of IVF-PQ's latency at 1M rows (docs/benchmarks.md). IVF-PQ:
``num_sub_vectors`` = dimension / 8, i.e. 8 dimensions per code byte, which keeps recall high for
sentence embeddings, falling back to dimension / 16 or the largest divisor of the dimension. Fewer
than ``index.min_rows`` rows get no index: exact search over so few vectors is fast and exact
(``auto``: while rows x dimension < ``EXACT_SEARCH_FLOATS``, where exact search stayed under 5 ms a
query on a 2-core AMD EPYC: bench/exact_crossover.py, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from typing import Optional

from connectors.lance.index import IndexParams, ivf_sample_rate
from pipelines.config import RQ_DIMENSION, IndexConfig

__all__ = [
    "DEFAULT_REFINE_FACTOR",
    "DEFAULT_RQ_BITS",
    "derive_index_params",
    "settle_metric",
    "index_workers",
    "min_index_rows",
    "ROWS_PER_LIST",
]

DEFAULT_REFINE_FACTOR = 5  # refine_factor=auto when no recall target tunes it
DEFAULT_RQ_BITS = 4  # index.num_bits=auto
ROWS_PER_INDEX_WORKER = 1_000_000  # index.workers=auto: one build task per this many rows
ROWS_PER_LIST = 256  # Lance trains each IVF list on at least this many vectors
# index.min_rows=auto: exact search's p50 crossed 5 ms at 3,000 rows x 384 and 5,000 x 256 (~1.1M floats).
EXACT_SEARCH_FLOATS = 1_000_000


def _sub_vectors(dimension: int) -> int:
    for per_code in (8, 16):
        if dimension % per_code == 0 and dimension // per_code >= 1:
            return dimension // per_code
    divisors = [d for d in range(1, dimension + 1) if dimension % d == 0 and dimension // d >= 8]
    return max(divisors) if divisors else 1


def index_workers(setting, rows: int, cpus: Optional[float] = None) -> int:
    """Build tasks for ``index.workers``: a number as given; auto: one per ``ROWS_PER_INDEX_WORKER``
    rows, at most one per CPU of the cluster (``cpus``; None: one task)."""
    if setting != "auto":
        return int(setting)
    return max(1, min(rows // ROWS_PER_INDEX_WORKER, int(cpus or 1)))


def min_index_rows(config: IndexConfig, dimension: int) -> int:
    """The fewest rows that get an ANN index (``index.min_rows``; auto from ``dimension``)."""
    if config.min_rows != "auto":
        return config.min_rows
    return math.ceil(EXACT_SEARCH_FLOATS / dimension)


def settle_metric(config: IndexConfig, table_metric: Optional[str]) -> IndexConfig:
    """``config`` with ``metric: auto`` settled to the table's (``table_metric``), else cosine: an index of
    another distance than the table's vectors were made for would answer other queries."""
    if config.metric != "auto":
        return config
    return config.model_copy(update={"metric": table_metric or "cosine"})


def derive_index_params(rows: int, dimension: int, config: IndexConfig, cpus: Optional[float] = None) -> IndexParams:
    """Index parameters for ``rows`` vectors of ``dimension``; explicit config values win. ``cpus``:
    the cluster's, for ``index.workers=auto``."""
    config = settle_metric(config, None)  # a run settles it (pipelines/run/model_plan.py); else the default
    if config.type == "none":
        return IndexParams("none", config.metric, reason="index.type=none")
    least = min_index_rows(config, dimension)
    if rows < least:
        setting = f"auto: {least} at dimension {dimension}" if config.min_rows == "auto" else least
        return IndexParams("none", config.metric, reason=f"{rows} rows < index.min_rows ({setting})")
    partitions = config.num_partitions
    if partitions == "auto":
        # Lance trains each list on at least ROWS_PER_LIST vectors, so never ask for more lists than that allows.
        partitions = max(1, min(round(math.sqrt(rows)), rows // ROWS_PER_LIST))
    sub_vectors = config.num_sub_vectors
    if sub_vectors == "auto":
        sub_vectors = _sub_vectors(dimension)
    elif dimension % sub_vectors:
        raise ValueError(f"index.num_sub_vectors={sub_vectors} must divide the dimension {dimension}")
    if config.type == "ivf_rq" and dimension % 8:
        raise ValueError(RQ_DIMENSION.format(dim=dimension))
    bits = DEFAULT_RQ_BITS if config.num_bits == "auto" else config.num_bits
    nprobes = config.nprobes
    if nprobes == "auto":
        # About 10% of the lists, at least 20 (LanceDB's default), never more than there are.
        nprobes = min(partitions, max(20, math.ceil(partitions / 10)))
    return IndexParams(
        type=config.type,
        metric=config.metric,
        num_partitions=partitions,
        num_sub_vectors=sub_vectors if config.type == "ivf_pq" else None,
        num_bits=bits if config.type == "ivf_rq" else None,
        nprobes=nprobes,
        refine_factor=DEFAULT_REFINE_FACTOR if config.refine_factor == "auto" else config.refine_factor,
        sample_rate=ivf_sample_rate(partitions),
        workers=index_workers(config.workers, rows, cpus),
    )
