"""Reciprocal rank fusion: one ranking from a vector search's and a text search's hits.

Each row's score is the sum over the rankings that found it of ``1 / (k + rank)`` (rank from 1;
Cormack, Clarke and Buettcher, SIGIR 2009; LanceDB's ``RRFReranker`` with its default ``k=60`` computes
the same). Only ranks count, never the raw scores: a cosine similarity and a BM25 score are on scales
that cannot be added. A row found by both searches is counted once, with both contributions, and the
``found_by`` column says which searches found it (``"vector"``, ``"text"`` or ``"vector,text"``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

from connectors import columns as C

__all__ = ["DEFAULT_RRF_K", "reciprocal_rank_fusion"]

DEFAULT_RRF_K = 60


def reciprocal_rank_fusion(legs: Mapping[str, pa.Table], key: str, limit: int, k: int = DEFAULT_RRF_K) -> pa.Table:
    """The top ``limit`` rows of ``legs`` (name -> hits, best first), fused by reciprocal rank.

    ``key`` identifies a row across the legs (its row id). The result has each row's columns as the
    first leg that found it returned them (columns the legs do not share, and each leg's own ``score``,
    are dropped), ``score`` (the fused score, highest first; ties keep the order of first appearance)
    and ``found_by``.
    """
    if k < 1:
        raise ValueError(f"the rank constant k must be >= 1, got {k}")
    first = next(iter(legs.values()))
    shared = [c for c in first.column_names if c != C.SCORE and all(c in t.column_names for t in legs.values())]
    scores: dict = {}
    found: dict = {}
    rows: dict = {}
    for name, hits in legs.items():
        keys = hits.column(key).to_pylist()
        for rank, row_key in enumerate(keys, 1):
            scores[row_key] = scores.get(row_key, 0.0) + 1.0 / (k + rank)
            found.setdefault(row_key, []).append(name)
            rows.setdefault(row_key, (name, rank - 1))
    order = sorted(scores, key=lambda r: -scores[r])[:limit]  # sorted() is stable: first seen first
    picked = [legs[rows[r][0]].select(shared).slice(rows[r][1], 1) for r in order]
    schema = first.select(shared).schema
    out = pa.concat_tables(picked) if picked else schema.empty_table()
    out = out.append_column(C.SCORE, pa.array(np.array([scores[r] for r in order], dtype=np.float32)))
    return out.append_column(C.FOUND_BY, pa.array([",".join(found[r]) for r in order], pa.string()))
