"""Recall-targeted query defaults: measure the index against exact search and keep the cheapest setting.

The reasoning behind it: docs/design.md, section pipelines/vector_index/tuning.py.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from connectors.lance.index import IndexParams, code_bytes, exact_search, search_batch
from pipelines.config import IndexConfig
from pipelines.vector_index.pseudo_queries import sample_pseudo_queries

__all__ = [
    "INDEX_LINEAGE_KEYS",
    "TuningResult",
    "index_lineage",
    "nprobes_grid",
    "knn_recall",
    "recall_lower_bound",
    "tune_query_defaults",
]

log = logging.getLogger(__name__)

# Refine factors in the order they are tried (1 re-scores the top-k only: exact scores, same members).
# The result is the cheapest setting that reaches the target whatever the order; the order sets how soon
# a first setting bounds the rest: 10 reaches the target at a moderate nprobes for every index type.
REFINE_GRID = (10, 3, 5, 2, 1, 20, 50)
# A refine candidate is a random read of one float vector; a list is scanned sequentially. Per byte,
# the reads cost about this many times the scan (2026-12-02, AMD EPYC x2, 1M x 256 IVF-RQ: 0.02 ms per candidate
# vs 0.043 ms per 32 KB list; docs/design.md).
REFINE_BYTE_WEIGHT = 16
CONFIDENCE_Z = 1.645  # one-sided 95%: the recall's lower bound that must reach the target


@dataclass
class TuningResult:
    target_recall: float
    recall: float  # mean recall@k of the chosen setting against exact search
    recall_low: Optional[float]  # its one-sided 95% lower bound over the queries: what met the target
    nprobes: Optional[int]
    refine_factor: Optional[int]
    reached: bool
    queries: int
    # "pseudo-queries" (sampled documents turned along the data's spread, each document left out of its
    # own results: pipelines/vector_index/pseudo_queries.py) or where the given queries came from
    query_source: str
    k: int = 10
    seconds: float = 0.0
    tried: list = field(default_factory=list)  # [{"nprobes", "refine_factor", "recall", "recall_low"}, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def nprobes_grid(partitions: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5 times them) up to and including ``partitions``."""
    grid = {p for i in range(40) for p in (2**i, 3 * 2**i) if p < partitions}
    return sorted(grid | {partitions})


def _hits(approx: Sequence[Sequence], exact: Sequence[Sequence], k: int) -> list[int]:
    """Per query, how many of its exact top-k the approximate top-k holds."""
    return [len(set(a[:k]) & set(e[:k])) for a, e in zip(approx, exact)]


def knn_recall(approx: Sequence[Sequence], exact: Sequence[Sequence], k: int) -> float:
    """k-NN recall@k (not relevance recall, :func:`pipelines.evaluation.metrics.recall_at_k`): the mean over
    queries of |approx top-k ∩ exact top-k| / k, as hits / (queries * k): one division of
    integers, so 570 hits of 600 is exactly 0.95 (a mean of per-query fractions can land below it)."""
    return _recall(_hits(approx, exact, k), k)


def _recall(hits: list[int], k: int) -> float:
    return sum(hits) / (len(hits) * k) if hits else 0.0


def recall_lower_bound(approx: Sequence[Sequence], exact: Sequence[Sequence], k: int, z: float = CONFIDENCE_Z) -> float:
    """One-sided lower confidence bound of :func:`knn_recall`: the mean minus ``z`` standard errors
    of the per-query recalls (the mean for fewer than two queries)."""
    return _bounds(_hits(approx, exact, k), k, z)[1]


def _bounds(hits: list[int], k: int, z: float) -> tuple[float, float]:
    """(recall, its lower bound) from per-query hits."""
    mean = _recall(hits, k)
    if len(hits) < 2:
        return mean, mean
    return mean, mean - z * float(np.std(np.asarray(hits, dtype=np.float64) / k, ddof=1)) / math.sqrt(len(hits))


def _drop(ids: list, exclude, k: int) -> list:
    return [i for i in ids if i != exclude][:k]


def _search_grid(
    probes: list, refines: list, partitions: int, target: float, cost, recall
) -> tuple[list, Optional[dict]]:
    """Every setting measured (``recall(nprobes, refine)``: the mean and its lower bound) on the way to the
    cheapest (``cost``) that reaches ``target``, and that one (None: none did)."""
    tried: list[dict] = []
    best: Optional[tuple] = None  # (cost, the tried entry)
    # Re-scoring more candidates never loses a neighbour, so a refine factor that misses the target with
    # every list scanned rules out every smaller one (a target no setting reaches then costs 2-3 refine
    # factors' searches, not all seven: 39 of 91 settings at 78 lists).
    missed_at_all_lists: Optional[int] = None
    for refine in refines:
        if best is None and missed_at_all_lists is not None and (refine or 0) <= missed_at_all_lists:
            continue
        for nprobes in probes:
            if best is not None and cost(nprobes, refine) >= best[0]:
                break
            mean, low = recall(nprobes, refine)
            tried.append(
                {"nprobes": nprobes, "refine_factor": refine, "recall": round(mean, 4), "recall_low": round(low, 4)}
            )
            if low >= target:
                best = (cost(nprobes, refine), tried[-1])
                break
        else:
            if probes[-1] == partitions:
                missed_at_all_lists = max(missed_at_all_lists or 0, refine or 0)
    return tried, None if best is None else best[1]


def _choose(tried: list, best: Optional[dict], probes: list, refines: list, k: int, target: float) -> tuple[dict, bool]:
    """The setting to keep and whether it reaches the target: ``best``, else the most thorough measured."""
    if best is not None:
        return best, True
    last = (
        tried[-1] if tried else {"nprobes": probes[-1], "refine_factor": refines[-1], "recall": 0.0, "recall_low": 0.0}
    )
    chosen = max(tried, key=lambda t: (t["recall_low"], t["nprobes"], t["refine_factor"] or 0), default=last)
    log.warning(
        "index recall@%d target %.2f not reached; best measured %.3f (lower bound %.3f)",
        k,
        target,
        chosen["recall"],
        chosen["recall_low"],
    )
    return chosen, False


def _queries(table, config: IndexConfig, id_column: str, vectors, exclude, source: str, seed: int):
    """The query vectors, the id each must leave out of its results (a pseudo-query: its document), the
    extra hit to ask for, and what the queries are: ``vectors`` as given, else pseudo-queries made from
    ``config.tuning_queries`` documents sampled with :data:`DIRECTION_POOL` more (whose spread they follow)."""
    if vectors is None:
        documents, queries = sample_pseudo_queries(table, config.tuning_queries, id_column, seed=seed)
        return queries, documents, 1, "pseudo-queries"  # one more hit: the document, dropped
    if exclude is not None:
        return vectors, list(exclude), 1, source
    return vectors, [None] * len(vectors), 0, source


def tune_query_defaults(
    table,
    params: IndexParams,
    config: IndexConfig,
    *,
    id_column: str,
    rows: int,
    dimension: int,
    vectors: Optional[np.ndarray] = None,
    exclude: Optional[Sequence] = None,
    k: int = 10,
    seed: int = 0,
    source: str = "given",
    confidence_z: float = CONFIDENCE_Z,
) -> TuningResult:
    """Measure recall@k of the built index and pick ``nprobes``/``refine_factor`` for ``config.target_recall``.

    Only the knobs left at ``auto`` are searched; one given as a number (or ``refine_factor: null``) is
    kept as it is and only measured. Args:
        vectors: query vectors to tune on; by default ``config.tuning_queries`` pseudo-queries, each
            dropping its document from its results (``exclude``: the ids given ``vectors`` drop).
        source: what ``vectors`` are, for the result's ``query_source``.
        confidence_z: standard errors below the mean recall that must still reach the target (0: the
            mean itself, the rule before; bench/tuning.py compares the two).
    """
    started = time.perf_counter()
    target = float(config.target_recall)
    vectors, exclude, extra, source = _queries(table, config, id_column, vectors, exclude, source, seed)
    search = dict(metric=params.metric, id_column=id_column)
    truth = [_drop(ids, x, k) for ids, x in zip(exact_search(table, vectors, k + extra, **search), exclude)]

    partitions = params.num_partitions or 1
    probes = nprobes_grid(partitions) if config.nprobes == "auto" else [params.nprobes]
    refines = list(REFINE_GRID) if config.refine_factor == "auto" else [params.refine_factor]
    scanned = code_bytes(params.type, dimension, params.num_sub_vectors, num_bits=params.num_bits)

    def cost(nprobes: int, refine: Optional[int]) -> float:
        return rows * nprobes / partitions * scanned + k * (refine or 1) * dimension * 4 * REFINE_BYTE_WEIGHT

    def recall(nprobes: int, refine: Optional[int]) -> tuple[float, float]:
        found = search_batch(table, vectors, k + extra, nprobes=nprobes, refine_factor=refine, **search)
        found = [_drop(ids, x, k) for ids, x in zip(found, exclude)]
        return _bounds(_hits(found, truth, k), k, confidence_z)

    tried, best = _search_grid(probes, refines, partitions, target, cost, recall)
    chosen, reached = _choose(tried, best, probes, refines, k, target)
    return TuningResult(
        target_recall=target,
        recall=chosen["recall"],
        recall_low=chosen["recall_low"],
        nprobes=chosen["nprobes"],
        refine_factor=chosen["refine_factor"],
        reached=reached,
        queries=len(vectors),
        query_source=source,
        k=k,
        seconds=round(time.perf_counter() - started, 2),
        tried=tried,
    )


INDEX_LINEAGE_KEYS = ("index", "query_defaults", "tuning")  # what index_lineage writes


def index_lineage(params: IndexParams, tuning: Optional[TuningResult]) -> dict:
    """The lineage keys that describe the index (:data:`INDEX_LINEAGE_KEYS`): its parameters, the query
    defaults, how they were chosen (``tuning``, only when the index was tuned)."""
    out = {
        "index": params.to_dict(),
        "query_defaults": {"nprobes": params.nprobes, "refine_factor": params.refine_factor},
    }
    if tuning is not None:
        summary = tuning.to_dict()
        summary.pop("tried")
        out["tuning"] = summary
    return out
