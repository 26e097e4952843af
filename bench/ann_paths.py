"""Where an ANN query's time goes at 1M x 256: index type x settings x query path, side by side.

    python bench/ann_paths.py [--rows 1000000] [--indexes pq32,rq,pq64] [--nprobes 8 16 32 64]
                              [--refine 0 5 10 20 50] [--workdir DIR]

The vectors and queries are bench/index.py's (real MiniLM sentence vectors cut to 256 dimensions,
the rest derived from them; 200 held-out queries to read recall on while choosing, 200 more to
measure). For every index (IVF-PQ with 32 or 64 sub-vectors, IVF-RQ; 1,000 lists each) and every
(nprobes, refine_factor) it prints recall@10 against exact search and the single-query p50/p99 of
two ways to ask the same engine:

  lancedb   ``table.search(q).distance_type(...).nprobes(n).refine_factor(r).limit(10).to_arrow()``
  dataset   ``lance_dataset.to_table(nearest={...})``: the path ``Searcher`` takes

Both return the same rows (the recall columns agree); the difference is per-query overhead.
``--parallel`` and ``--approx-mode`` pass Lance's ``query_parallelism`` and ``approx_mode`` on the
dataset path; ``rq2``/``rq4`` are IVF-RQ with 2/4 bits a dimension, ``sq`` IVF-SQ (int8).
``--workdir`` keeps the vectors and indexed tables for a second run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from index import DIM, derive, exact_topk, real_vectors, recall  # noqa: E402

from bench._machine import cpu  # noqa: E402


def index_config(name: str):
    from lancedb.index import IvfPq, IvfRq, IvfSq

    return {
        "pq32": IvfPq(distance_type="cosine", num_partitions=1000, num_sub_vectors=32),
        "pq64": IvfPq(distance_type="cosine", num_partitions=1000, num_sub_vectors=64),
        "rq": IvfRq(distance_type="cosine", num_partitions=1000),
        "rq2": IvfRq(distance_type="cosine", num_partitions=1000, num_bits=2),
        "rq4": IvfRq(distance_type="cosine", num_partitions=1000, num_bits=4),
        "sq": IvfSq(distance_type="cosine", num_partitions=1000),
    }[name]


def timed(search, queries) -> tuple[list, float, float]:
    search(queries[0])  # warm caches
    found, lat = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q))
        lat.append(time.perf_counter() - t)
    return found, float(np.percentile(lat, 50) * 1e3), float(np.percentile(lat, 99) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--indexes", default="pq32,rq,pq64")
    ap.add_argument("--nprobes", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--refine", type=int, nargs="+", default=[0, 5, 10, 20, 50])
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--parallel", type=int, default=None, help="Lance's query_parallelism (dataset path; -1: all cores)"
    )
    ap.add_argument(
        "--approx-mode", default=None, choices=["fast", "normal", "accurate"], help="RQ indexes (dataset path)"
    )
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()

    import lancedb

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ann-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "base.npy").exists():
        real = real_vectors(20_000 + 700)
        np.save(work / "queries.npy", real[-700:])
        np.save(work / "base.npy", derive(real[:-700], args.rows))
    base, queries = np.load(work / "base.npy"), np.load(work / "queries.npy")
    choose, measure = queries[:200], queries[200:400]
    truth_choose, truth_measure = exact_topk(base, choose), exact_topk(base, measure)
    db = lancedb.connect(str(work / "db"))
    data = pa.table(
        {"id": np.arange(len(base)), "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), DIM)}
    )
    print(f"{cpu()}; {len(base)} x {DIM}, k=10, 200 queries to choose on, 200 measured")
    print(
        f"{'index':<6}{'nprobes':>8}{'refine':>7}{'recall':>8}  {'lancedb p50/p99 ms':>19}  {'dataset p50/p99 ms':>19}"
    )
    rows = []
    for name in args.indexes.split(","):
        if name not in db.list_tables().tables:
            table = db.create_table(name, data)
            started = time.perf_counter()
            table.create_index("vector", config=index_config(name))
            print(f"{name}: index built in {time.perf_counter() - started:.1f}s")
        table = db.open_table(name)
        dataset = table.to_lance()
        for nprobes in args.nprobes:
            for refine in args.refine:

                def through_lancedb(q):
                    s = table.search(q).distance_type("cosine").limit(10).select(["id"]).nprobes(nprobes)
                    return (s.refine_factor(refine) if refine else s).to_arrow().column("id").to_pylist()

                def through_dataset(q):
                    nearest = {"column": "vector", "q": q, "k": 10, "nprobes": nprobes, "metric": "cosine"}
                    if refine:
                        nearest["refine_factor"] = refine
                    if args.parallel is not None:
                        nearest["query_parallelism"] = args.parallel
                    if args.approx_mode:
                        nearest["approx_mode"] = args.approx_mode
                    hits = dataset.to_table(columns=["id", "_distance"], nearest=nearest)
                    return hits.column("id").to_pylist()

                chosen = recall(timed(through_dataset, choose)[0], truth_choose)
                found_l, l50, l99 = timed(through_lancedb, measure)
                found_d, d50, d99 = timed(through_dataset, measure)
                row = dict(index=name, nprobes=nprobes, refine=refine, recall_choose=round(chosen, 3),
                           recall=round(recall(found_d, truth_measure), 3),
                           recall_lancedb=round(recall(found_l, truth_measure), 3),
                           lancedb_p50=round(l50, 2), lancedb_p99=round(l99, 2),
                           dataset_p50=round(d50, 2), dataset_p99=round(d99, 2))  # fmt: skip
                rows.append(row)
                line = f"{name:<6}{nprobes:>8}{refine:>7}{row['recall']:>8.3f}"
                print(f"{line}  {l50:>10.2f}/{l99:<8.2f}  {d50:>10.2f}/{d99:<8.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
