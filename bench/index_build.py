"""Distributed vector index build: one task (LanceDB) against lance-ray with 1 and 2 tasks.

    python bench/index_build.py [--rows 1000000 10000000] [--dim 64] [--workers 1 2] [--cores-per-task 1]

For each table size, the same vectors are indexed three ways with the parameters the job derives
(IVF-PQ, lists ~ sqrt(rows), dim/8 sub-vectors, training sample capped near 256k vectors):

  one task         ``build_index`` with index.workers=1: LanceDB's ``create_index`` in one process
  lance-ray N      ``build_index`` with index.workers=N: centroids and codebook trained once on a sample
                   in the calling process, then N Ray tasks each build a segment over 1/N of the fragments

and then queried at the stored defaults (nprobes as derived, refine_factor 5, k 10): recall@10
against exact search (numpy), single-query p50; and recall@10 with refine_factor 40, where PQ's
ranking error is mostly re-scored away and what is left is which lists were probed. Each build runs with
``--cores-per-task`` compute
threads (LANCE_CPU_THREADS, and 1 BLAS thread): on a small machine this is how N tasks on N cores of
a cluster are measured apart from one task that would otherwise use every core of the machine.

Vectors: a mixture of 4096 Gaussian clusters on the unit sphere, with noise that makes neighbouring
clusters overlap (real embeddings are neither uniform nor well separated); generated in chunks, with
queries drawn the same way. The table is written with 100k rows per fragment, as the job's sink would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEEP_REFINE = 40  # a second recall figure where PQ's ranking error is mostly gone: what is left is the lists
sys.path.insert(0, str(ROOT))

from bench._machine import cpu  # noqa: E402


def vectors(rows: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(0)  # the same clusters for base and queries
    centres = rng.normal(size=(4096, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), np.float32)
    for s in range(0, rows, 500_000):
        m = min(500_000, rows - s)
        v = centres[rng.integers(0, 4096, m)] + rng.normal(0, 0.6 / np.sqrt(dim), (m, dim)).astype(np.float32)
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def exact_top10(base, queries):
    import numpy as np

    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 10), np.int64)
    for s in range(0, len(base), 1_000_000):  # streamed, so the score matrix stays small
        scores = queries @ base[s : s + 1_000_000].T
        part = np.argpartition(-scores, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cores-per-task", type=int, default=1)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument(
        "--lancedb-up-to",
        type=int,
        default=10**12,
        help="measure the one-task LanceDB build only on tables up to this many rows (it is slow)",
    )
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "index_build.json"))
    args = ap.parse_args()

    threads = str(args.cores_per_task)
    os.environ.update(
        LANCE_CPU_THREADS=threads, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads
    )
    import lance
    import lancedb
    import numpy as np
    import pyarrow as pa
    import ray

    from connectors.lance.index import build_index
    from pipelines.config import IndexConfig
    from pipelines.vector_index.params import derive_index_params

    ray.init(
        num_cpus=max(args.workers),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                k: threads for k in ("LANCE_CPU_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            }
        },
    )
    print(f"cpu: {cpu()}; {args.cores_per_task} compute thread(s) per build task; dim {args.dim}", flush=True)
    results = []
    for rows in args.rows:
        t0 = time.perf_counter()
        base = vectors(rows, args.dim, seed=1)
        queries = vectors(args.queries, args.dim, seed=2)
        truth = exact_top10(base, queries)
        setups = [("one task (LanceDB)", 1)] * (rows <= args.lancedb_up_to) + [
            (f"lance-ray, {w} task{'s' if w > 1 else ''}", w) for w in args.workers
        ]
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            uri = os.path.join(tmp, "t.lance")

            def batches():
                for s in range(0, rows, 100_000):
                    chunk = base[s : s + 100_000]  # noqa: F821 - `del base` below is after the last use
                    yield pa.record_batch(
                        [
                            pa.array(np.arange(s, s + len(chunk))),
                            pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), args.dim),
                        ],
                        names=["id", "vector"],
                    )

            schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), args.dim))])
            lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), uri, max_rows_per_file=100_000)
            print(f"{rows} rows: data, exact top-10 and table in {time.perf_counter() - t0:.0f}s", flush=True)
            table = lancedb.connect(tmp).open_table("t")
            for name, workers in setups:
                params = derive_index_params(rows, args.dim, IndexConfig(workers=workers))
                if name.startswith("lance-ray") and workers == 1:
                    # lance-ray's path with one task: build_index takes it only for workers > 1
                    from connectors.lance.index import _build_distributed

                    start = time.perf_counter()
                    _build_distributed(table, params, "vector", None)
                    params.build_seconds = round(time.perf_counter() - start, 2)
                else:
                    build_index(table, params)
                table.checkout_latest()
                segments = table.index_stats("vector_idx").num_indices
                found, lat = [], []
                for q in queries:
                    start = time.perf_counter()
                    hits = (
                        table.search(q)
                        .distance_type("cosine")
                        .nprobes(params.nprobes)
                        .refine_factor(params.refine_factor)
                        .limit(10)
                        .select(["id", "_distance"])
                        .to_arrow()
                    )
                    lat.append(time.perf_counter() - start)
                    found.append(hits.column("id").to_pylist())
                rec = float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth)]))
                deep = [
                    table.search(q)
                    .distance_type("cosine")
                    .nprobes(params.nprobes)
                    .refine_factor(DEEP_REFINE)
                    .limit(10)
                    .select(["id", "_distance"])
                    .to_arrow()
                    .column("id")
                    .to_pylist()
                    for q in queries
                ]
                rec_deep = float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(deep, truth)]))
                row = dict(
                    rows=rows,
                    dim=args.dim,
                    setup=name,
                    workers=workers,
                    segments=segments,
                    build_s=params.build_seconds,
                    recall_at_10=round(rec, 4),
                    recall_at_10_refine_deep=round(rec_deep, 4),
                    p50_ms=round(float(np.median(lat)) * 1e3, 2),
                    partitions=params.num_partitions,
                    sub_vectors=params.num_sub_vectors,
                    nprobes=params.nprobes,
                    refine_factor=params.refine_factor,
                    sample_rate=params.sample_rate,
                )
                results.append(row)
                print(
                    f"  {name:<22} build {row['build_s']:>8.1f}s  segments {segments}  recall@10 "
                    f"{row['recall_at_10']:.4f} (refine {DEEP_REFINE}: {rec_deep:.4f})  p50 {row['p50_ms']:.1f} ms",
                    flush=True,
                )
        del base
    print(
        f"\n{'rows':>10} {'setup':<22}{'build s':>9}{'speed-up':>9}{'recall@10':>11}{'refine ' + str(DEEP_REFINE):>10}"
        f"{'p50 ms':>8}"
    )
    for r in results:
        one = next(x for x in results if x["rows"] == r["rows"] and x["setup"].startswith("lance-ray, 1"))
        print(
            f"{r['rows']:>10} {r['setup']:<22}{r['build_s']:>9.1f}{one['build_s'] / r['build_s']:>9.2f}"
            f"{r['recall_at_10']:>11.4f}{r['recall_at_10_refine_deep']:>10.4f}{r['p50_ms']:>8.1f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(dict(cpu=cpu(), cores_per_task=args.cores_per_task, results=results), indent=1)
    )


if __name__ == "__main__":
    main()
