"""Retrieval metrics with the definitions BEIR reports (trec_eval's, via pytrec_eval).

A run maps each query id to its ranked document ids (best first); qrels map each query id to
``{doc_id: relevance}``. A document is relevant when its relevance is above 0.

- ``nDCG@k``: sum over the top k of ``rel / log2(rank + 1)``, divided by the same sum for the ideal
  ordering of the judged documents (linear gain, as trec_eval).
- ``Recall@k``: relevant documents in the top k / relevant documents judged for the query.
- ``MRR@k``: 1 / rank of the first relevant document in the top k, 0 when there is none.

Means are over the queries that have at least one relevant document (BEIR drops the others); a query
missing from the run scores 0.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["METRICS", "evaluate_run", "mrr_at_k", "ndcg_at_k", "recall_at_k"]

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def ndcg_at_k(ranked: Sequence, judged: Mapping, k: int) -> float:
    dcg = sum(judged.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]) if judged.get(doc, 0) > 0)
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(rank + 2) for rank, r in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at_k(ranked: Sequence, judged: Mapping, k: int) -> float:
    relevant = {doc for doc, r in judged.items() if r > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranked: Sequence, judged: Mapping, k: int) -> float:
    for rank, doc in enumerate(ranked[:k], 1):
        if judged.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def evaluate_run(run: Mapping[str, Sequence], qrels: Mapping[str, Mapping]) -> dict[str, float]:
    """Mean nDCG@10, Recall@10, Recall@100 and MRR@10 of ``run`` over the judged queries."""
    judged = {q: rels for q, rels in qrels.items() if any(r > 0 for r in rels.values())}
    if not judged:
        raise ValueError("no query has a relevant document in the qrels")
    per_query = {
        "ndcg@10": [ndcg_at_k(run.get(q, []), rels, 10) for q, rels in judged.items()],
        "recall@10": [recall_at_k(run.get(q, []), rels, 10) for q, rels in judged.items()],
        "recall@100": [recall_at_k(run.get(q, []), rels, 100) for q, rels in judged.items()],
        "mrr@10": [mrr_at_k(run.get(q, []), rels, 10) for q, rels in judged.items()],
    }
    return {name: sum(values) / len(values) for name, values in per_query.items()}
