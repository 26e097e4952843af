"""Text, vector and hybrid search at 1M rows: the full-text index's build time and size, each mode's latency.

    python bench/hybrid.py [--rows 1000000] [--queries 300] [--workdir DIR]

Rows: bench/index.py's 1M x 256 vectors (sentences of the bundled Wikipedia sample embedded with the
packaged MiniLM, the rest derived from two of them: ``a*x_i + (1-a)*x_j + noise``), each with text: a
real row its sentence, a derived row the two sentences its vector was mixed from, so that words and
vectors tell the same story (about 40 words a row, from the sample's 11,123 sentences; the last
``--queries`` of them are held out as queries).

The table is indexed as the indexing job indexes it: the vector index (`build_index` with the derived
parameters, query defaults tuned as the job tunes them without a query file, `tune_query_defaults` on
pseudo-queries) and the full-text index
(`keep_text_index` with `index.fts`' default options). Searches go through `Searcher.search` (the query
job's, the service's and the Python API's path) with a query vector and its text, one query at a time:
held-out real sentences (20 words on average) and their first three words longer than three letters
(keyword queries, embedded with the query prompt beforehand: the times are the searches').
Printed: the full-text index's build seconds, size on disk and bytes a row, and each mode's p50/p99
milliseconds and QPS.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from index import DIM, derive_with_sources, real_vectors, sample_sentences  # noqa: E402


def corpus(rows: int, queries: int, workdir, real_rows: int = 20_000) -> tuple[np.ndarray, list, np.ndarray, list]:
    """(base vectors, base texts, query vectors, query texts); vectors kept in ``workdir`` when given."""
    sentences = sample_sentences(real_rows + queries)
    real_rows = len(sentences) - queries  # the sample has about 20k sentences: the queries are its last ones
    work = Path(workdir) if workdir else None
    if work and (work / "real.npy").exists() and len(np.load(work / "real.npy", mmap_mode="r")) == len(sentences):
        real = np.load(work / "real.npy")
    else:
        real = real_vectors(len(sentences))
        if work:
            work.mkdir(parents=True, exist_ok=True)
            np.save(work / "real.npy", real)
    base, sources = derive_with_sources(real[:real_rows], rows)
    texts = [sentences[i] if i == j else f"{sentences[i]} {sentences[j]}" for i, j in sources.tolist()]
    return base, texts, real[real_rows:], sentences[real_rows:]


def keywords(sentence: str, n: int = 3) -> str:
    return " ".join([w for w in re.findall(r"[A-Za-z]+", sentence) if len(w) > 3][:n]) or sentence


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def lineage(params, tuned, fts) -> dict:
    """What the indexing job records for this table (model, dimension, metric, index, query defaults)."""
    from connectors.model_store import model_fingerprint, resolve_model_dir
    from pipelines.config import ModelConfig

    model = ModelConfig()
    return {
        "model": {"path": model.path, "fingerprint": model_fingerprint(resolve_model_dir(model.path, None, None))},
        "dimension": DIM,
        "metric": "cosine",
        "index": {**params.to_dict(), "fts": fts},
        "query_defaults": {"nprobes": tuned.nprobes, "refine_factor": tuned.refine_factor},
    }


def latency(search, vectors: np.ndarray, texts: list[str]) -> np.ndarray:
    search(vectors[0], texts[0])  # warm caches
    took = []
    for vector, text in zip(vectors, texts):
        started = time.perf_counter()
        search(vector, text)
        took.append(time.perf_counter() - started)
    return np.array(took)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--real", type=int, default=20_000, help="real vectors to derive from (at most the sample's)")
    ap.add_argument("--workdir", default=None, help="keep the real vectors here for the next run")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "hybrid.json"))
    args = ap.parse_args()

    import lancedb

    from bench._machine import cpu
    from connectors.lance.index import build_index
    from connectors.lance.text_index import keep_text_index, text_index_of
    from pipelines.config import IndexConfig
    from pipelines.search.searcher import Searcher
    from pipelines.vector_index.params import derive_index_params
    from pipelines.vector_index.tuning import tune_query_defaults

    started = time.perf_counter()
    base, texts, query_vectors, query_texts = corpus(args.rows, args.queries, args.workdir, args.real)
    print(f"{cpu()}; {args.rows} rows x {DIM} dims with text in {time.perf_counter() - started:.0f}s", flush=True)
    words = np.array([len(t.split()) for t in texts])
    config = IndexConfig()
    with tempfile.TemporaryDirectory() as tmp:
        table = lancedb.connect(tmp).create_table(
            "bench",
            pa.table(
                {
                    "id": np.arange(args.rows),
                    "text": texts,
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), DIM),
                }
            ),
        )
        del base, texts
        params = build_index(table, derive_index_params(args.rows, DIM, config))
        print(f"vector index ({params.type}, {params.num_partitions} lists): {params.build_seconds:.0f}s", flush=True)
        tuned = tune_query_defaults(table, params, config, id_column="id", rows=args.rows, dimension=DIM)
        fts = keep_text_index(table, "text", config.fts_options(), incremental=False)
        index = text_index_of(table, "text")
        size = directory_bytes(Path(tmp) / "bench.lance" / "_indices" / str(index.index_uuid))
        print(f"full-text index: {fts['seconds']:.0f}s, {size / 2**20:.0f} MiB", flush=True)

        searcher = Searcher(table, lineage(params, tuned, fts))
        short = [keywords(t) for t in query_texts]
        queries = {"sentence": (query_vectors, query_texts), "keywords": (searcher.embed_queries(short), short)}
        rows = []
        for kind, (qvectors, qtexts) in queries.items():
            for mode in ("vector", "text", "hybrid"):
                took = latency(lambda v, t, m=mode: searcher.search(v, 10, mode=m, text=t), qvectors, qtexts)
                p50, p99 = np.percentile(took, 50) * 1e3, np.percentile(took, 99) * 1e3
                rows.append(dict(queries=kind, mode=mode, p50_ms=p50, p99_ms=p99, qps=len(took) / took.sum()))

    print(
        f"\n{cpu()}; {args.rows:,} rows x {DIM} dims, {words.mean():.0f} words a row; {args.queries} queries one at a "
        f"time through Searcher.search, k=10; vector index {params.type} ({params.num_partitions} lists, "
        f"nprobes={tuned.nprobes}, refine={tuned.refine_factor}, tuned on {tuned.query_source})"
    )
    print(
        f"full-text index (Lance inverted, {fts['options']}): built in {fts['seconds']:.1f}s, "
        f"{size / 2**20:.1f} MiB on disk, {size / args.rows:.0f} bytes a row; vector index built in "
        f"{params.build_seconds:.1f}s\n"
    )
    print(f"{'queries':<10}{'mode':<8}{'p50 ms':>8}{'p99 ms':>8}{'QPS':>7}")
    for r in rows:
        print(f"{r['queries']:<10}{r['mode']:<8}{r['p50_ms']:8.2f}{r['p99_ms']:8.2f}{r['qps']:7.0f}")
    summary = dict(
        cpu=cpu(), rows=args.rows, words_per_row=float(words.mean()), fts_seconds=fts["seconds"], fts_bytes=size,
        vector_index_seconds=params.build_seconds, nprobes=tuned.nprobes, refine_factor=tuned.refine_factor,
        latency=rows,
    )  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
