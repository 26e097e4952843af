"""What moving pylance changed, measured side by side: this interpreter and ``--other-python``.

    python bench/lance_upgrade.py --other-python /path/to/old/.venv/bin/python [--rows 200000]

Each interpreter runs the same three measurements in a fresh process (``--measure``) and prints one
JSON line; the parent prints them next to each other with the ratio new/old:

  index build   IVF-PQ over ``--rows`` random unit vectors of ``--dim``, built through LanceDB as the
                job builds it (lists ~ sqrt(rows), dim/8 sub-vectors), seconds
  search p50    single-query latency, ``--queries`` queries, nprobes 20, refine_factor 5, k 10 (ms)
  commit        one Append commit (the job's checkpoint commit: ``LanceDataset.commit`` with
                ``read_version``) onto a table that already has ``--fragments`` fragments, median
                of 20, with the v1 manifest naming and the v2 naming (``enable_v2_manifest_paths``,
                the default for new tables in both versions), which finds the latest version
                without listing every manifest
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._machine import cpu  # noqa: E402


def _commit_ms(root: str, fragments: int, v2: bool) -> float:
    import lance
    import pyarrow as pa
    from lance.fragment import write_fragments

    uri = os.path.join(root, f"frag{'v2' if v2 else 'v1'}.lance")
    schema = pa.schema([("id", pa.int64())])
    one = pa.table({"id": list(range(fragments))}, schema=schema)
    kwargs = {"enable_v2_manifest_paths": v2}
    # Many small fragments at once: one row per fragment.
    lance.write_dataset(one, uri, max_rows_per_file=1, **kwargs)
    times = []
    for i in range(20):
        ds = lance.dataset(uri)
        frags = write_fragments(pa.table({"id": [10**9 + i]}, schema=schema), uri, schema=schema)
        start = time.perf_counter()
        lance.LanceDataset.commit(uri, lance.LanceOperation.Append(frags), read_version=ds.version)
        times.append((time.perf_counter() - start) * 1000)
    assert len(lance.dataset(uri).get_fragments()) == fragments + 20
    return round(statistics.median(times), 2)


def measure(rows: int, dim: int, queries: int, fragments: int) -> dict:
    import lance
    import lancedb
    import numpy as np
    import pyarrow as pa
    from lancedb.index import IvfPq

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = {"pylance": lance.__version__, "lancedb": lancedb.__version__}
    with tempfile.TemporaryDirectory() as root:
        db = lancedb.connect(root)
        table = db.create_table(
            "t",
            pa.table(
                {
                    "id": pa.array(range(rows), pa.int64()),
                    "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
                }
            ),
        )
        start = time.perf_counter()
        table.create_index(
            "vector", config=IvfPq(distance_type="cosine", num_partitions=int(rows**0.5), num_sub_vectors=dim // 8)
        )
        out["index_build_s"] = round(time.perf_counter() - start, 2)
        q = rng.standard_normal((queries, dim), dtype=np.float32)
        for v in q[:5]:  # warm the caches
            table.search(v).nprobes(20).refine_factor(5).limit(10).to_arrow()
        times = []
        for v in q:
            start = time.perf_counter()
            table.search(v).nprobes(20).refine_factor(5).limit(10).to_arrow()
            times.append((time.perf_counter() - start) * 1000)
        out["search_p50_ms"] = round(statistics.median(times), 2)
        out["commit_ms_v1_paths"] = _commit_ms(root, fragments, v2=False)
        out["commit_ms_v2_paths"] = _commit_ms(root, fragments, v2=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--other-python", help="the interpreter of the environment to compare with")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--fragments", type=int, default=3000)
    ap.add_argument("--measure", action="store_true", help="measure in this process and print one JSON line")
    args = ap.parse_args()
    sizes = [
        "--rows",
        str(args.rows),
        "--dim",
        str(args.dim),
        "--queries",
        str(args.queries),
        "--fragments",
        str(args.fragments),
    ]
    if args.measure:
        print(json.dumps(measure(args.rows, args.dim, args.queries, args.fragments)))
        return
    results = []
    for python in [args.other_python, sys.executable]:
        if not python:
            continue
        done = subprocess.run([python, __file__, "--measure", *sizes], capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"cpu: {cpu()}; rows {args.rows} x {args.dim}, {args.queries} queries, {args.fragments} fragments")
    keys = ["pylance", "lancedb", "index_build_s", "search_p50_ms", "commit_ms_v1_paths", "commit_ms_v2_paths"]
    print(f"{'':22}" + "".join(f"{r['pylance']:>14}" for r in results) + ("   new/old" if len(results) == 2 else ""))
    for key in keys[2:]:
        vals = [r.get(key) for r in results]
        ratio = ""
        if len(vals) == 2 and all(isinstance(v, (int, float)) and v for v in vals):
            ratio = f"{vals[1] / vals[0]:10.2f}"
        print(f"{key:22}" + "".join(f"{str(v):>14}" for v in vals) + ratio)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
