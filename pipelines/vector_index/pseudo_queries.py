"""Pseudo-queries: sampled documents turned 48 degrees along the data's own spread, to tune on without real queries.

A document as a query finds its near-copies (chunks of one page, boilerplate, the same source), all
in its own IVF list, so settings tuned on documents are far too cheap for real queries, which land
between documents and find neighbours spread over many lists (bench/index.py, 1M x 256: tuned on
documents, real queries got recall@10 0.59-0.63). A pseudo-query is a sampled document ``x`` turned
by :data:`ANGLE_DEGREES` towards a random direction ``u`` of the data's covariance (a Gaussian
combination of other sampled documents, centred, orthogonal to ``x``): ``cos a * x + sin a * |x| * u``.
Drawn from the covariance, ``u`` moves the query along the directions the documents vary in (those
the index's lists split), whatever the model's nominal dimension; isotropic noise would mostly
leave that span, and how much it disturbs the ranking would depend on the dimension. The document
itself is left out of the query's results. It needs no model: the index step runs after the encoders
are gone. Real queries (``index.tuning_queries_path``) remain the truer measure: the angle is one
calibration, on one benchmark's vectors (below), not a property of every corpus.
"""

from __future__ import annotations

import math

import numpy as np

from connectors.lance.index import sample_vectors

__all__ = ["ANGLE_DEGREES", "DIRECTION_POOL", "pseudo_queries", "sample_pseudo_queries"]

# cos 48 degrees = 0.67. On bench/index.py's vectors (Intel Xeon 2 vCPU, 2026-12-07; docs/benchmarks.md)
# the angle sets how many lists the tuning picks: at 1M rows, 1,000 lists, 35/40/45/47.5/50/55 degrees
# picked 8/12/24/48/64/96 lists (real queries: 32-48), giving held-out real queries recall@10
# 0.83/0.89/0.926/0.96/0.97/0.99; at 200k rows 40/45/50 picked 32/48/96 (real queries: 32-48).
# At 48 degrees the bench's tuning picked 48 lists at both sizes, as real queries did (recall 0.953
# at 1M, 0.979 at 200k; target 0.95).
ANGLE_DEGREES = 48.0
DIRECTION_POOL = 1000  # documents whose spread the directions are drawn from (besides the queries)


def pseudo_queries(
    documents: np.ndarray, pool: np.ndarray, *, angle_degrees: float = ANGLE_DEGREES, seed: int = 0
) -> np.ndarray:
    """One pseudo-query per row of ``documents`` (float32, each with its document's norm).

    Args:
        documents: the sampled documents' vectors, one a row.
        pool: other documents' vectors, whose covariance the directions are drawn from (at least two
            rows; the documents themselves serve when the table has no others).
        angle_degrees: the angle between a pseudo-query and its document.
    """
    x = np.asarray(documents, dtype=np.float64)
    pool = np.asarray(pool, dtype=np.float64)
    if len(pool) < 2:
        raise ValueError(f"pseudo_queries needs at least two pool rows for a spread, got {len(pool)}")
    rng = np.random.default_rng(seed)
    centred = pool - pool.mean(axis=0)
    u = rng.normal(size=(len(x), len(pool))) @ centred  # ~ N(0, covariance) up to a scale
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.maximum(norms, 1e-12)
    u -= (u * unit).sum(axis=1, keepdims=True) * unit  # orthogonal to its document
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    angle = math.radians(angle_degrees)
    return (math.cos(angle) * x + math.sin(angle) * norms * u).astype(np.float32)


def sample_pseudo_queries(table, n: int, id_column: str, seed: int = 0) -> tuple[list, np.ndarray]:
    """``n`` pseudo-queries from documents sampled (seeded) from ``table`` with :data:`DIRECTION_POOL`
    more, whose spread the directions follow: (the documents' ids, each query's to leave out; vectors)."""
    ids, sampled = sample_vectors(table, n + DIRECTION_POOL, id_column, seed=seed)
    picks = np.random.default_rng(seed).permutation(len(ids))
    mine, rest = picks[:n], picks[n:]
    pool = sampled[rest] if len(rest) >= 2 else sampled  # a small table: the documents' own spread
    return [ids[i] for i in mine], pseudo_queries(sampled[mine], pool, seed=seed)
