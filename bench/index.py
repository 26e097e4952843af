"""Vector index benchmark: 1M x 256-d vectors that look like real embeddings, five index setups.

    python bench/index.py [--rows 1000000] [--queries 500]

Vectors: sentences of the bundled Wikipedia sample are embedded with the packaged MiniLM (the
pipeline's own encoder), truncated to 256 dims and re-normalised (Matryoshka). Embedding 1M texts on
this 2-core machine would take about an hour, so the rest are derived by a documented perturbation:
each derived vector is ``normalize(a*x_i + (1-a)*x_j + s*e)`` for two random real vectors, a ~ U(0.6,
1.0), e ~ N(0, I/d) and s = 0.15, which keeps the data on the real embeddings' manifold (clusters,
anisotropy) instead of uniform noise. Queries are real sentence vectors held out of the base set.

Contenders (recall@10 against exact search on 500 held-out real queries, build time, single-query
p50/p99 latency through the Lance dataset path that ``Searcher`` takes, QPS one query at a time and
with batches of 100 queries in one search):
  ours, pseudo   the job's default index (IVF-RQ, 4 bits a dimension, derived lists) built as the job
                 builds it, queried with the nprobes/refine_factor the job's tuning picks without
                 tuning queries: from pseudo-queries (pipelines/vector_index/pseudo_queries.py)
  ours, docs     the same index tuned on sampled documents as queries, each left out of its own
                 results (the job's way before 2026-12-07, for comparison)
  ours, queries  the same index, tuned as the job does with index.tuning_queries_path: on real queries
                 (a tuning split of held-out sentences, apart from the measured ones)
  IVF-PQ         the default until 2026-12-02 (dimension / 8 sub-vectors), built and tuned on real
                 queries the same way
  lancedb-def    IvfPq() with LanceDB's defaults, queried with LanceDB's defaults
  faiss-ivfpq    FAISS IndexIVFPQ, IVF-PQ's lists and code size and its query-tuned nprobes, and
                 IndexRefineFlat with the same refine factor (needs faiss-cpu)

``--workdir DIR`` keeps the vectors (bench/ann_paths.py's layout) for a second run; ``--only-ours``
measures the IVF-RQ rows only (the 1M IVF-PQ build and tuning take about 13 minutes on 2 cores).
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


def sample_sentences(limit: int) -> list[str]:
    """The bundled Wikipedia sample's sentences (over 20 characters), in order: ``real_vectors``' texts."""
    sentences = []
    for text in pq.read_table(ROOT / "data/sample/wiki_vital.parquet", columns=["text"]).column("text").to_pylist():
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20]
    return sentences[:limit]


def real_vectors(limit: int) -> np.ndarray:
    from pipelines.config import ModelConfig
    from pipelines.embed.hf_encoder import HFEncoder
    from pipelines.embed.postprocess import postprocess
    from pipelines.embed.tokenizer import load_tokenizer, tokenize_texts

    sentences = sample_sentences(limit)
    model = ModelConfig()
    tok = load_tokenizer(model.path, None, "right")
    ids, _ = tokenize_texts(tok, sentences, 256)
    pooled = HFEncoder(model).embed(ids)
    return postprocess(pooled, DIM)


def derive(real: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    return derive_with_sources(real, rows, seed)[0]


def derive_with_sources(real: np.ndarray, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The derived vectors and, per row, the two real vectors it was mixed from (``(rows, 2)``; a real
    row's own index twice)."""
    rng = np.random.default_rng(seed)
    out = np.empty((rows, DIM), np.float32)
    sources = np.empty((rows, 2), np.int64)
    n = len(real)
    for start in range(0, rows, 100_000):
        m = min(100_000, rows - start)
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        a = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
        v = a * real[i] + (1 - a) * real[j] + 0.15 * rng.normal(0, 1 / np.sqrt(DIM), (m, DIM)).astype(np.float32)
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
        sources[start : start + m, 0], sources[start : start + m, 1] = i, j
    out[: min(n, rows)] = real[: min(n, rows)]
    sources[: min(n, rows)] = np.arange(min(n, rows))[:, None]
    return out, sources


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


def vectors(rows: int, queries: int, tuning: int, workdir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, tuning queries, measured queries); kept in ``workdir`` when given."""
    held = queries + tuning
    work = Path(workdir) if workdir else None
    if work and (work / "base.npy").exists():
        base, real_held = np.load(work / "base.npy"), np.load(work / "queries.npy")
        if len(base) >= rows and len(real_held) == held:  # a smaller run takes the first rows
            return base[:rows], real_held[:tuning], real_held[tuning:]
    real = real_vectors(20_000 + held)
    base = derive(real[:-held], rows)
    if work:
        work.mkdir(parents=True, exist_ok=True)
        np.save(work / "base.npy", base)
        np.save(work / "queries.npy", real[-held:])
    return base, real[-held:-queries], real[-queries:]


def dataset_search(dataset, nprobes, refine):
    """One query through ``lance.Dataset.to_table(nearest=...)``, as ``Searcher._hits`` asks it."""

    def search(q):
        nearest = {"column": "vector", "q": q, "k": 10, "metric": "cosine"}
        if nprobes:
            nearest["nprobes"] = nprobes
        if refine:
            nearest["refine_factor"] = refine
        return dataset.to_table(columns=["id", "_distance"], nearest=nearest).column("id").to_pylist()

    return search


def batch_qps(search, queries: np.ndarray, batch: int = 100) -> float:
    """Queries per second when ``batch`` queries go to one search (``Searcher.search_many``'s way)."""
    search(queries[:batch])  # warm
    started = time.perf_counter()
    for s in range(0, len(queries), batch):
        search(queries[s : s + batch])
    return len(queries) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--tuning-queries", type=int, default=200)
    ap.add_argument("--workdir", default=None, help="keep the vectors here for the next run")
    ap.add_argument("--only-ours", action="store_true", help="only the IVF-RQ rows (no IVF-PQ, LanceDB, FAISS)")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "index.json"))
    args = ap.parse_args()

    import lancedb
    from lancedb.index import IvfPq

    from bench._machine import cpu
    from connectors.lance.index import build_index, sample_vectors
    from pipelines.config import IndexConfig
    from pipelines.vector_index.params import derive_index_params
    from pipelines.vector_index.tuning import tune_query_defaults

    t0 = time.perf_counter()
    base, tuning_queries, queries = vectors(args.rows, args.queries, args.tuning_queries, args.workdir)
    truth = exact_topk(base, queries)
    print(f"{cpu()}; {args.rows} x {DIM} vectors, ground truth in {time.perf_counter() - t0:.0f}s", flush=True)

    ours = derive_index_params(args.rows, DIM, IndexConfig())
    pq = derive_index_params(args.rows, DIM, IndexConfig(type="ivf_pq"))
    data = pa.table(
        {"id": np.arange(args.rows), "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), DIM)}
    )
    rows, tuned = [], {}

    def measure(name, table, build, nprobes, refine):
        dataset = table.to_lance()
        search = dataset_search(dataset, nprobes, refine)
        search(queries[0])  # warm caches
        found, lat = time_queries(search, queries)
        batch = batch_qps(search, queries)
        settings = f"nprobes={nprobes or 'default'}, refine={refine or 'none'}"
        rows.append((name, build, recall(found, truth), lat, batch, settings))

    def tune(name, table, params, config, kind):
        """Tune as the job does on ``kind`` of queries: "real" (index.tuning_queries_path), "pseudo" (the job's
        default without them) or "documents" (sampled, each left out of its own results)."""
        given = {"real": dict(vectors=tuning_queries, source="held-out"), "pseudo": {}}.get(kind)
        if given is None:
            ids, docs = sample_vectors(table, config.tuning_queries, "id")
            given = dict(vectors=docs, exclude=ids, source="documents")
        result = tune_query_defaults(table, params, config, id_column="id", rows=args.rows, dimension=DIM, **given)
        tuned[name] = result
        print(f"{name}: tuning in {result.seconds:.0f}s picked nprobes={result.nprobes}, refine_factor="
              f"{result.refine_factor} (recall {result.recall:.3f} on the tuning queries)", flush=True)  # fmt: skip
        return result

    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(tmp)
        setups = (("IVF-RQ", ours, IndexConfig()), ("IVF-PQ", pq, IndexConfig(type="ivf_pq")))
        for label, params, config in setups[:1] if args.only_ours else setups:
            table = db.create_table(label, data)
            t = time.perf_counter()
            build_index(table, params)  # exactly what the indexing job does after its write
            build = time.perf_counter() - t
            print(f"{label}: built in {build:.0f}s", flush=True)
            if label == "IVF-RQ":
                for kind, name in (("documents", "tuned on documents"), ("pseudo", "pseudo-queries (default)")):
                    done = tune(f"ours, {name}", table, params, config, kind)
                    title = f"ours ({params.num_bits}-bit IVF-RQ), {name}" if kind == "pseudo" else f"ours, {name}"
                    measure(title, table, build, done.nprobes, done.refine_factor)
            real = tune(f"{label}, tuned on real queries", table, params, config, "real")
            name = "ours, tuned on real queries" if label == "IVF-RQ" else "IVF-PQ (default until s13), real queries"
            measure(name, table, build, real.nprobes, real.refine_factor)
            db.drop_table(label)
        if not args.only_ours:
            table = db.create_table("lancedb", data)
            t = time.perf_counter()
            table.create_index("vector", config=IvfPq(distance_type="cosine"))
            measure("lancedb defaults IvfPq()", table, time.perf_counter() - t, None, None)
    faiss = None
    if not args.only_ours:
        try:
            import faiss
        except ImportError:
            print("faiss-cpu not installed: pip install faiss-cpu to add FAISS IVF-PQ")
    if faiss is not None:
        pq_tuned = tuned["IVF-PQ, tuned on real queries"]
        faiss.omp_set_num_threads(2)
        quant = faiss.IndexFlatIP(DIM)
        ivfpq = faiss.IndexIVFPQ(quant, DIM, pq.num_partitions, pq.num_sub_vectors, 8, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefineFlat(ivfpq)  # re-scores k * k_factor candidates on the float vectors
        t = time.perf_counter()
        index.train(
            base[np.random.default_rng(1).choice(len(base), min(len(base), 256 * pq.num_partitions), replace=False)]
        )
        index.add(base)
        build = time.perf_counter() - t
        params = faiss.IndexRefineSearchParameters(
            k_factor=pq_tuned.refine_factor or 1, base_index_params=faiss.SearchParametersIVF(nprobe=pq_tuned.nprobes)
        )

        def faiss_search(q):
            q = q[None, :] if q.ndim == 1 else q
            return index.search(q, 10, params=params)[1].tolist()

        found, lat = time_queries(lambda q: faiss_search(q)[0], queries)
        settings = f"nprobe={pq_tuned.nprobes}, k_factor={pq_tuned.refine_factor}"
        rows.append(("FAISS IVF-PQ + refine (IVF-PQ's lists, codes)", build, recall(found, truth), lat,
                     batch_qps(faiss_search, queries), settings))  # fmt: skip

    print(
        f"\n{cpu()}; {args.rows} x {DIM} vectors, {args.queries} measured queries ({args.tuning_queries} more to "
        f"tune on), k=10; {ours.num_partitions} lists; the Lance dataset path (Searcher's)\n"
    )
    head = f"{'index':<46}{'build s':>8}{'recall@10':>10}{'p50 ms':>8}{'p99 ms':>8}{'QPS':>7}{'QPS x100':>9}"
    print(head + "  query settings")
    out = []
    for name, build, rec, lat, batch, settings in rows:
        p50, p99 = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
        qps = len(lat) / lat.sum()
        print(f"{name:<46}{build:8.1f}{rec:10.3f}{p50:8.2f}{p99:8.2f}{qps:7.0f}{batch:9.0f}  {settings}")
        out.append(dict(index=name, build_s=build, recall_at_10=rec, p50_ms=p50, p99_ms=p99, qps=qps,
                        qps_batch_100=batch, settings=settings))  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu(), "rows": out}, indent=2))


if __name__ == "__main__":
    main()
