"""Reciprocal rank fusion: one ranking from a vector search's and a text search's hits.

Each row's score is the sum over the rankings that found it of ``1 / (k + rank)`` (rank from 1;
Cormack, Clarke and Buettcher, SIGIR 2009; LanceDB's ``RRFReranker`` with its default ``k=60`` computes
the same). Only ranks count, never the raw scores: a cosine similarity and a BM25 score are on scales
that cannot be added. A row found by both searches is counted once, with both contributions, and the
``found_by`` column says which searches found it (``"vector"``, ``"text"`` or ``"vector,text"``).

A leg may carry a weight (its contributions multiplied by it; weighted RRF, as Elasticsearch and
OpenSearch offer it): where one search is clearly the better on a corpus, plain RRF pulls the fused
ranking halfway to the weaker one. ``bench/fusion.py`` measures k and the weights on an evaluated
table (docs/evaluation.md).
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import pyarrow as pa

from connectors import columns as C

__all__ = ["DEFAULT_RRF_K", "DEFAULT_TEXT_WEIGHT", "leg_weights", "reciprocal_rank_fusion"]

DEFAULT_RRF_K = 60
DEFAULT_TEXT_WEIGHT = 0.5  # the text search's share: 0.5 weighs both legs alike (plain RRF)


def leg_weights(text_weight: float) -> dict[str, float]:
    """``{"vector": ..., "text": ...}`` for a text share in [0, 1]; 0.5 gives both 1 (plain RRF's scores)."""
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"the text search's weight must be between 0 and 1, got {text_weight}")
    return {"vector": 2.0 * (1.0 - text_weight), "text": 2.0 * text_weight}


def reciprocal_rank_fusion(
    legs: Mapping[str, pa.Table],
    key: str,
    limit: int,
    k: int = DEFAULT_RRF_K,
    weights: Optional[Mapping[str, float]] = None,
) -> pa.Table:
    """The top ``limit`` rows of ``legs`` (name -> hits, best first), fused by reciprocal rank.

    ``key`` identifies a row across the legs (its row id); ``weights``: leg name -> weight (default 1
    each; a leg of weight 0 adds nothing to the scores). The result has each row's columns as the
    first leg that found it returned them (columns the legs do not share, and each leg's own ``score``,
    are dropped), ``score`` (the fused score, highest first; ties keep the order of first appearance)
    and ``found_by``.
    """
    if k < 1:
        raise ValueError(f"the rank constant k must be >= 1, got {k}")
    weights = weights or {}
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"leg weights must not be negative, got {dict(weights)}")
    first = next(iter(legs.values()))
    shared = [c for c in first.column_names if c != C.SCORE and all(c in t.column_names for t in legs.values())]
    scores: dict = {}
    found: dict = {}
    rows: dict = {}
    for name, hits in legs.items():
        keys = hits.column(key).to_pylist()
        weight = weights.get(name, 1.0)
        for rank, row_key in enumerate(keys, 1):
            scores[row_key] = scores.get(row_key, 0.0) + weight / (k + rank)
            found.setdefault(row_key, []).append(name)
            rows.setdefault(row_key, (name, rank - 1))
    order = sorted(scores, key=lambda r: -scores[r])[:limit]  # sorted() is stable: first seen first
    picked = [legs[rows[r][0]].select(shared).slice(rows[r][1], 1) for r in order]
    schema = first.select(shared).schema
    out = pa.concat_tables(picked) if picked else schema.empty_table()
    out = out.append_column(C.SCORE, pa.array(np.array([scores[r] for r in order], dtype=np.float32)))
    return out.append_column(C.FOUND_BY, pa.array([",".join(found[r]) for r in order], pa.string()))
