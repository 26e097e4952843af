"""Recall tuning: what its exact neighbours cost, and whether its settings hold on new queries.

    python bench/tuning.py [--rows 100000 1000000] [--samples 25000 100000] [--queries 500]

For each table size the same index is built once as the job builds it (IVF-PQ, derived lists and
sub-vectors), then:

1. **Ground truth cost.** The exact top-10 of the tuning queries (``--tuning-queries``, 100 like
   ``index.tuning_queries``) two ways, with identical results: LanceDB's flat search (one scan per
   query; what tuning used before) and ``exact_search`` (one streamed read for all the queries;
   what it uses now).
2. **Tuning as the job does** (``tune_query_defaults``, target recall@10 0.95, real query vectors
   as ``index.tuning_queries_path`` gives them), and the chosen setting checked on held-out queries
   against exact search over the whole table (numpy), with its single-query p50 latency.
   The same with the rule used before: the cheapest setting whose *mean* recall reaches the target.
3. **The flat-cost alternative that was rejected**: tuning on a uniform sample of ``--samples`` rows,
   indexed with the table's own IVF centroids (the table's lists restricted to the sample), checked
   the same way. Its cost does not grow with the table, but its settings miss the target on the
   table: a sample is sparser, so PQ's ranking error there is smaller and the refine factor it picks
   is too small.

Vectors: bench/index.py's (real MiniLM sentence vectors of the bundled Wikipedia sample, 256 dims,
and derived ones around them). Queries are real sentence vectors held out of the table, shuffled
before the tuning and held-out sets are split, so both come from the same distribution.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench._machine import cpu  # noqa: E402


def ivf_centroids(dataset, column: str = "vector") -> np.ndarray:
    """The IVF centroids of the vector index on ``column``, from Lance's index statistics."""
    name = next(i["name"] for i in dataset.list_indices() if list(i["fields"]) == [column])
    index = next(i for i in dataset.stats.index_stats(name)["indices"] if i.get("centroids"))
    return np.asarray(index["centroids"], dtype=np.float32)


def sample_table(table, n: int, path: str, params, seed: int = 0, column: str = "vector"):
    """``n`` rows drawn uniformly, written to ``path`` and indexed with the table's own IVF centroids
    (the PQ codebook is trained on the sample): the table's index restricted to the sample."""
    import lance
    import lancedb

    dataset = table.to_lance()
    picks = np.sort(np.random.default_rng(seed).choice(dataset.count_rows(), size=n, replace=False))
    sample = lance.write_dataset(dataset.take(picks.tolist(), columns=["id", column]), f"{path}/sample.lance")
    centroids = ivf_centroids(dataset, column)
    sample.create_index(
        column,
        index_type="IVF_PQ",
        metric=params.metric,
        num_partitions=len(centroids),
        ivf_centroids=centroids,
        num_sub_vectors=params.num_sub_vectors,
    )
    return lancedb.connect(path).open_table("sample")


def held_out(table, tuned, queries, truth) -> tuple[float, float]:
    """recall@10 against ``truth`` and p50 ms of single queries at the tuned setting."""
    found, lat = [], []
    for q in queries:
        t = time.perf_counter()
        s = table.search(q).distance_type("cosine").limit(10).select(["id", "_distance"]).nprobes(tuned.nprobes)
        if tuned.refine_factor:
            s = s.refine_factor(tuned.refine_factor)
        found.append(s.to_arrow().column("id").to_pylist())
        lat.append(time.perf_counter() - t)
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / (10 * len(queries)), float(np.percentile(lat, 50) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--samples", type=int, nargs="+", default=[25_000, 100_000])
    ap.add_argument("--queries", type=int, default=500, help="held-out queries the settings are checked on")
    ap.add_argument(
        "--tuning-queries", type=int, nargs="+", default=[100], help="tuning-set sizes, each tuned on in turn"
    )
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import lancedb
    import pyarrow as pa
    from index import DIM, derive, exact_topk, real_vectors

    from connectors.lance.index import build_index, exact_search, search_batch
    from pipelines.config import IndexConfig
    from pipelines.vector_index.params import derive_index_params
    from pipelines.vector_index.tuning import CONFIDENCE_Z, tune_query_defaults

    t0 = time.perf_counter()
    real = real_vectors(20_000)
    held = args.queries + max(args.tuning_queries)
    real = real[np.random.default_rng(0).permutation(len(real))]  # tuning and held-out: one distribution
    queries, tuning_pool, real = real[-args.queries :], real[-held : -args.queries], real[:-held]
    tuning_queries = tuning_pool[-args.tuning_queries[0] :]  # a set of n: the pool's last n (nested sets)
    print(f"{len(real) + held} real vectors embedded in {time.perf_counter() - t0:.0f}s; {cpu()}", flush=True)

    results = []
    for rows in args.rows:
        base = derive(real, rows)
        truth = exact_topk(base, queries)
        params = derive_index_params(rows, DIM, IndexConfig())
        with tempfile.TemporaryDirectory() as tmp:
            data = pa.table(
                {"id": np.arange(rows), "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), DIM)}
            )
            table = lancedb.connect(tmp).create_table("t", data)
            build_index(table, params)
            t = time.perf_counter()
            flat = search_batch(table, tuning_queries, 10, metric="cosine", id_column="id", exact=True)
            flat_s = time.perf_counter() - t
            t = time.perf_counter()
            scan = exact_search(table, tuning_queries, 10, metric="cosine", id_column="id")
            scan_s = time.perf_counter() - t
            same = sum(len(set(a) & set(b)) for a, b in zip(flat, scan)) / (10 * len(scan))
            print(
                f"\n{rows} rows: {params.num_partitions} lists, {params.num_sub_vectors} sub-vectors, built in "
                f"{params.build_seconds:.0f}s; exact top-10 of {len(scan)} queries: LanceDB flat search "
                f"{flat_s:.1f}s, one streamed read {scan_s:.1f}s (same neighbours: {same:.3f})",
                flush=True,
            )
            # (name, table or sample size, z, tuning queries): the job's rule (the recall's 95% lower
            # bound reaches the target) for each tuning-set size, the rule before it (the mean does:
            # z = 0), and the rejected samples.
            first = args.tuning_queries[0]
            candidates = [(f"the table, {n} q", table, CONFIDENCE_Z, n) for n in args.tuning_queries]
            candidates.append((f"the table, {first} q, mean", table, 0.0, first))
            for n in sorted(s for s in args.samples if s < rows):
                candidates.append((f"a {n}-row sample", n, CONFIDENCE_Z, first))
            for name, target, z, n_tuning in candidates:
                t = time.perf_counter()
                if isinstance(target, int):
                    target = sample_table(table, target, f"{tmp}/s{len(results)}", params)
                tuned = tune_query_defaults(
                    target,
                    params,
                    IndexConfig(tuning_queries=n_tuning),
                    id_column="id",
                    rows=rows,
                    dimension=DIM,
                    vectors=tuning_pool[-n_tuning:],
                    source="tuning split",
                    confidence_z=z,
                )
                seconds = time.perf_counter() - t
                recall, p50 = held_out(table, tuned, queries, truth)
                # The tuning queries themselves through the held-out path (single queries, numpy's exact
                # top-10): tells a search-path difference from the tuning set's own luck.
                rechecked, _ = held_out(
                    table, tuned, tuning_pool[-n_tuning:], exact_topk(base, tuning_pool[-n_tuning:])
                )
                row = dict(
                    rows=rows,
                    tuned_on=name,
                    seconds=seconds,
                    truth_flat_s=flat_s,
                    truth_scan_s=scan_s,
                    nprobes=tuned.nprobes,
                    refine_factor=tuned.refine_factor,
                    tuning_recall=tuned.recall,
                    tuning_recall_low=tuned.recall_low,
                    held_out_recall=recall,
                    tuning_rechecked=rechecked,
                    p50_ms=p50,
                )
                results.append(row)
                print(
                    f"  tuned on {name:<24}{seconds:7.1f}s  nprobes={tuned.nprobes:<4} "
                    f"refine={tuned.refine_factor!s:<4} recall: tuning {tuned.recall:.3f} (lower bound "
                    f"{tuned.recall_low:.3f}, rechecked {rechecked:.3f}), held-out {recall:.3f}  "
                    f"p50 {p50:.1f} ms",
                    flush=True,
                )
    print(
        f"\n{'rows':>9}  {'tuned on':<24} {'tune s':>7} {'nprobes':>8} {'refine':>7} {'tuning':>7} {'low':>6} "
        f"{'recheck':>8} {'held-out':>9} {'p50 ms':>7}   ({cpu()})"
    )
    for r in results:
        print(
            f"{r['rows']:>9}  {r['tuned_on']:<24} {r['seconds']:>7.1f} {r['nprobes']:>8} {r['refine_factor']!s:>7} "
            f"{r['tuning_recall']:>7.3f} {r['tuning_recall_low']:>6.3f} {r['tuning_rechecked']:>8.3f} "
            f"{r['held_out_recall']:>9.3f} {r['p50_ms']:>7.1f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(cpu=cpu(), results=results), indent=2))


if __name__ == "__main__":
    main()
