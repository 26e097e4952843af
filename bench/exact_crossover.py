"""Up to how many rows exact search answers a query in under 5 ms: what ``index.min_rows`` follows.

    python bench/exact_crossover.py [--dims 384 256] [--rows 2000 5000 10000 20000 50000 100000]
                                    [--queries 200] [--target-ms 5]

For each dimension and row count: a Lance table of that many random unit vectors (exact search reads
every vector, so its cost does not depend on what they hold), searched the way ``Searcher`` searches
a table without an index (``to_table(nearest={..., "use_index": False})``, one query at a time,
k=10). Prints p50/p99 per size and, per dimension, the largest size whose p50 stays under the
target: above it an index pays, below it exact search is both exact and fast enough.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._machine import cpu  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 256])
    ap.add_argument("--rows", type=int, nargs="+", default=[2000, 5000, 10000, 20000, 50000, 100000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--target-ms", type=float, default=5.0)
    args = ap.parse_args()

    import lance

    rng = np.random.default_rng(0)
    print(f"{cpu()}; exact search, one query at a time, k=10, {args.queries} queries per size")
    print(f"{'dim':>5}{'rows':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for dim in args.dims:
        base = rng.normal(size=(max(args.rows), dim)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        queries = base[rng.choice(len(base), args.queries, replace=False)] + 0.1 * rng.normal(size=(args.queries, dim))
        queries = queries.astype(np.float32)
        fits = None
        for rows in sorted(args.rows):
            with tempfile.TemporaryDirectory() as tmp:
                data = pa.table(
                    {
                        "id": [f"d{i}" for i in range(rows)],
                        "vector": pa.FixedSizeListArray.from_arrays(pa.array(base[:rows].ravel()), dim),
                    }
                )
                dataset = lance.write_dataset(data, str(Path(tmp) / "t.lance"))

                def search(q, dataset=dataset):
                    nearest = {"column": "vector", "q": q, "k": 10, "metric": "cosine", "use_index": False}
                    return dataset.to_table(columns=["id", "_distance"], nearest=nearest)

                search(queries[0])  # warm
                lat = []
                for q in queries:
                    t = time.perf_counter()
                    search(q)
                    lat.append(time.perf_counter() - t)
                p50, p99 = np.percentile(lat, 50) * 1e3, np.percentile(lat, 99) * 1e3
                print(f"{dim:>5}{rows:>9}{p50:>9.2f}{p99:>9.2f}", flush=True)
                if p50 < args.target_ms:
                    fits = rows
        print(f"  dim {dim}: exact search p50 < {args.target_ms:g} ms up to {fits or 'none'} of the sizes tried")


if __name__ == "__main__":
    main()
