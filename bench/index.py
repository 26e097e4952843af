"""Vector index benchmark: 1M x 256-d vectors that look like real embeddings, five index setups.

    python bench/index.py [--rows 1000000] [--queries 500]

Vectors: sentences of the bundled Wikipedia sample are embedded with the packaged MiniLM (the
pipeline's own encoder), truncated to 256 dims and re-normalised (Matryoshka). Embedding 1M texts on
this 2-core machine would take about an hour, so the rest are derived by a documented perturbation:
each derived vector is ``normalize(a*x_i + (1-a)*x_j + s*e)`` for two random real vectors, a ~ U(0.6,
1.0), e ~ N(0, I/d) and s = 0.15, which keeps the data on the real embeddings' manifold (clusters,
anisotropy) instead of uniform noise. Queries are real sentence vectors held out of the base set.

Contenders (recall@10 against exact search, build time, single-query p50/p99 latency, QPS):
  ours, docs    IVF-PQ built as the job builds it (derived lists and sub-vectors), queried with the
                nprobes/refine_factor the job's recall tuning picks from documents of the table
  ours, queries the same index, tuned as the job does with index.tuning_queries_path: on real
                queries (a tuning split of held-out sentences, apart from the measured ones)
  lancedb-def   IvfPq() with LanceDB's defaults, queried with LanceDB's defaults
  ivf-hnsw-sq   IvfHnswSq with our list count, queried with the query-tuned nprobes
  ivf-rq        IvfRq (RaBitQ) with our list count, the query-tuned nprobes and refine_factor
  faiss-ivfpq   FAISS IndexIVFPQ, same list count and code size, the query-tuned nprobes, and
                IndexRefineFlat with the same refine factor (needs faiss-cpu)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DIM = 256


def real_vectors(limit: int) -> np.ndarray:
    from pipelines.config import ModelConfig
    from pipelines.embed.hf_encoder import HFEncoder
    from pipelines.embed.postprocess import postprocess
    from pipelines.embed.tokenizer import load_tokenizer, tokenize_texts

    sentences = []
    for text in pq.read_table(ROOT / "data/sample/wiki_vital.parquet", columns=["text"]).column("text").to_pylist():
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20]
    sentences = sentences[:limit]
    model = ModelConfig()
    tok = load_tokenizer(model.path, None, "right")
    ids, _ = tokenize_texts(tok, sentences, 256)
    pooled = HFEncoder(model).embed(ids)
    return postprocess(pooled, DIM)


def derive(real: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, DIM), np.float32)
    n = len(real)
    for start in range(0, rows, 100_000):
        m = min(100_000, rows - start)
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        a = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
        v = a * real[i] + (1 - a) * real[j] + 0.15 * rng.normal(0, 1 / np.sqrt(DIM), (m, DIM)).astype(np.float32)
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    out[: min(n, rows)] = real[: min(n, rows)]
    return out


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    top = np.empty((len(queries), k), np.int64)
    for s in range(0, len(queries), 100):
        scores = queries[s : s + 100] @ base.T
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1)
        top[s : s + 100] = np.take_along_axis(part, order, 1)
    return top


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def time_queries(search, queries: np.ndarray) -> tuple[list, np.ndarray]:
    found, lat = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(search(q))
        lat.append(time.perf_counter() - t)
    return found, np.array(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--tuning-queries", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "index.json"))
    args = ap.parse_args()

    import lancedb
    from lancedb.index import IvfHnswSq, IvfPq, IvfRq

    from connectors.lance_index import build_index
    from pipelines.config import IndexConfig
    from pipelines.vector_index.params import derive_index_params
    from pipelines.vector_index.tuning import tune_query_defaults

    t0 = time.perf_counter()
    real = real_vectors(20_000 + args.queries)
    held = args.queries + args.tuning_queries
    queries, tuning_queries, real = real[-args.queries :], real[-held : -args.queries], real[:-held]
    base = derive(real, args.rows)
    truth = exact_topk(base, queries)
    print(f"{len(real)} real vectors embedded, {args.rows} derived, ground truth in {time.perf_counter() - t0:.0f}s")

    ours = derive_index_params(args.rows, DIM, IndexConfig())
    lists, subv = ours.num_partitions, ours.num_sub_vectors
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(tmp)
        data = pa.table(
            {"id": np.arange(args.rows), "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), DIM)}
        )
        setups = [
            (
                "ours, tuned on documents",
                IvfPq(distance_type="cosine", num_partitions=lists, num_sub_vectors=subv),
                dict(nprobes=ours.nprobes, refine=ours.refine_factor),
            ),
            ("ours, tuned on real queries", None, dict(nprobes=None, refine=None)),
            ("lancedb defaults IvfPq()", IvfPq(distance_type="cosine"), dict(nprobes=None, refine=None)),
            ("IVF-HNSW-SQ", IvfHnswSq(distance_type="cosine", num_partitions=lists), dict(nprobes=1, refine=None)),
            ("IVF-RQ", IvfRq(distance_type="cosine", num_partitions=lists), dict(nprobes=1, refine=1)),
        ]
        tuned, table = {}, None  # the "real queries" row reuses the table and index of the row before it
        for name, config, query in setups:
            t = time.perf_counter()
            if name.startswith("ours, tuned on real"):  # the same table and index, other query defaults
                build = rows[-1][1]
                tuned["queries"] = tune_query_defaults(
                    table,
                    ours,
                    IndexConfig(),
                    id_column="id",
                    rows=args.rows,
                    dimension=DIM,
                    vectors=tuning_queries,
                    source="held-out",
                )
                query.update(nprobes=tuned["queries"].nprobes, refine=tuned["queries"].refine_factor)
            elif name.startswith("ours"):  # exactly what the indexing job does after its write
                table = db.create_table("t", data, mode="overwrite")
                build_index(table, ours)
                build = time.perf_counter() - t
                tuned["docs"] = tune_query_defaults(
                    table, ours, IndexConfig(), id_column="id", rows=args.rows, dimension=DIM
                )
                query.update(nprobes=tuned["docs"].nprobes, refine=tuned["docs"].refine_factor)
            else:
                table = db.create_table("t", data, mode="overwrite")
                table.create_index("vector", config=config)
                build = time.perf_counter() - t
                if query["nprobes"]:  # HNSW-SQ and RQ: the query-tuned settings of ours
                    query["nprobes"] = tuned["queries"].nprobes
                    query["refine"] = query["refine"] and tuned["queries"].refine_factor
            if name.startswith("ours"):
                which = tuned["queries" if "queries" in name else "docs"]
                print(
                    f"{name}: built in {build:.0f}s; recall tuning in {which.seconds:.0f}s picked nprobes="
                    f"{which.nprobes}, refine_factor={which.refine_factor} (recall {which.recall:.3f} on the "
                    f"tuning queries)",
                    flush=True,
                )

            def search(q, table=table, query=query):
                s = table.search(q).distance_type("cosine").limit(10).select(["id"])
                if query["nprobes"]:
                    s = s.nprobes(query["nprobes"])
                if query["refine"]:
                    s = s.refine_factor(query["refine"])
                return s.to_arrow().column("id").to_pylist()

            search(queries[0])  # warm caches
            found, lat = time_queries(search, queries)
            rows.append(
                (
                    name,
                    build,
                    recall(found, truth),
                    lat,
                    f"nprobes={query['nprobes'] or 'default'}, refine={query['refine'] or 'none'}",
                )
            )
    try:
        import faiss

        faiss.omp_set_num_threads(2)
        quant = faiss.IndexFlatIP(DIM)
        ivfpq = faiss.IndexIVFPQ(quant, DIM, lists, subv, 8, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefineFlat(ivfpq)  # re-scores k * k_factor candidates on the float vectors
        t = time.perf_counter()
        index.train(base[np.random.default_rng(1).choice(len(base), min(len(base), 256 * lists), replace=False)])
        index.add(base)
        build = time.perf_counter() - t
        params = faiss.SearchParametersIVF(nprobe=tuned["queries"].nprobes)
        refine = tuned["queries"].refine_factor or 1
        found, lat = time_queries(
            lambda q: index.search(
                q[None, :], 10, params=faiss.IndexRefineSearchParameters(k_factor=refine, base_index_params=params)
            )[1][0].tolist(),
            queries,
        )
        rows.append(
            (
                "FAISS IVF-PQ + refine (same lists, codes)",
                build,
                recall(found, truth),
                lat,
                f"nprobe={params.nprobe}, k_factor={refine}",
            )
        )
    except ImportError:
        print("faiss-cpu not installed: pip install faiss-cpu to add FAISS IVF-PQ")

    print(
        f"\n{args.rows} x {DIM} vectors, {args.queries} measured queries ({args.tuning_queries} more to tune "
        f"on), k=10; ours: {lists} lists, {subv} sub-vectors\n"
    )
    print(f"{'index':<44}{'build s':>9}{'recall@10':>11}{'p50 ms':>9}{'p99 ms':>9}{'QPS':>8}  query settings")
    out = []
    for name, build, rec, lat, settings in rows:
        p50, p99 = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
        qps = len(lat) / lat.sum()
        print(f"{name:<44}{build:9.1f}{rec:11.3f}{p50:9.2f}{p99:9.2f}{qps:8.0f}  {settings}")
        out.append(
            dict(index=name, build_s=build, recall_at_10=rec, p50_ms=p50, p99_ms=p99, qps=qps, settings=settings)
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
