"""How much fusion settings matter: reciprocal rank fusion's k and a weight per leg, on an evaluated table.

    python bench/fusion.py --dataset out/eval-sets/wiki_desc_3k --table out/eval/wiki_desc_3k/lancedb:wiki_desc_3k_d384

Reads a table that `jobs.evaluate` left (its Searcher, as the query job opens it) and the dataset's
queries; runs the text and the exact vector search once per query (top 100 each), then fuses them
offline for every setting of the grid: ``score = w / (k + rank_text) + (1 - w) / (k + rank_vector)``
(``w = 0.5`` is the default RRF, up to a factor of 2; ties go to the vector leg, as in
``pipelines/search/fusion.py``, whose legs come vector first). The queries are split in two halves by id: the
setting that is best on the first half is measured on the second, so the printed gain of a tuned
setting is not the grid's best luck. Prints nDCG@10 of text, vector, default hybrid and the tuned
setting on each half.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

K_GRID = (5, 10, 20, 40, 60, 100)
W_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def fuse(text: list, vector: list, k: int, w: float, limit: int = 10) -> list:
    scores: dict = {}
    for weight, ranked in ((1 - w, vector), (w, text)):  # vector first: ties go to the vector leg, as in Searcher
        for rank, doc in enumerate(ranked, 1):
            scores[doc] = scores.get(doc, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda d: -scores[d])[:limit]


def mean_ndcg(runs: dict, qrels: dict, ids: list) -> float:
    from pipelines.evaluation.metrics import ndcg_at_k

    return float(np.mean([ndcg_at_k(runs[q], qrels[q], 10) for q in ids]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="the BEIR directory the table was evaluated on")
    ap.add_argument("--table", required=True, help="URI:TABLE of a table jobs.evaluate made")
    args = ap.parse_args()

    from bench._machine import cpu
    from connectors.beir import load_beir
    from pipelines.search.searcher import Searcher

    uri, name = args.table.rsplit(":", 1)
    searcher = Searcher.open(uri, name, device="cpu")
    data = load_beir(Path(args.dataset))
    ids = sorted(q for q in data.queries if q in data.qrels)
    vectors = searcher.embed_queries([data.queries[q] for q in ids])
    id_column = searcher.lineage.source.id_column
    legs = {"text": {}, "vector": {}}
    for q, vector in zip(ids, vectors):
        legs["text"][q] = searcher.search(data.queries[q], 100, mode="text").column(id_column).to_pylist()
        legs["vector"][q] = searcher.search(vector, 100, exact=True).column(id_column).to_pylist()
    halves = ids[: len(ids) // 2], ids[len(ids) // 2 :]
    grid = {(k, w): {q: fuse(legs["text"][q], legs["vector"][q], k, w) for q in ids} for k in K_GRID for w in W_GRID}
    best = max(grid, key=lambda s: mean_ndcg(grid[s], data.qrels, halves[0]))
    best_k = max(K_GRID, key=lambda k: mean_ndcg(grid[(k, 0.5)], data.qrels, halves[0]))
    print(f"{cpu()}; {args.table}, {len(ids)} queries (two halves of {len(halves[0])} and {len(halves[1])})\n")
    print(f"{'nDCG@10':<48}{'all':>7}{'half 1':>8}{'half 2':>8}")
    rows = [
        ("text (BM25)", legs["text"]),
        ("vector (exact)", legs["vector"]),
        ("hybrid, RRF k=60 (the default)", grid[(60, 0.5)]),
        (f"hybrid, RRF k={best_k} (half 1's best k)", grid[(best_k, 0.5)]),
        (f"hybrid, k={best[0]} text weight {best[1]} (half 1's best)", grid[best]),
    ]
    for label, runs in rows:
        parts = "".join(f"{mean_ndcg(runs, data.qrels, h):8.3f}" for h in halves)
        print(f"{label:<48}{mean_ndcg(runs, data.qrels, ids):7.3f}{parts}")
    top = sorted(grid, key=lambda s: -mean_ndcg(grid[s], data.qrels, ids))[:5]
    best_five = ", ".join(f"k={k} w={w}: {mean_ndcg(grid[(k, w)], data.qrels, ids):.3f}" for k, w in top)
    print(f"\nthe grid's five best on all queries: {best_five}")


if __name__ == "__main__":
    main()
