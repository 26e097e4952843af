"""What the duplicate-id check costs at scale: driver memory and time, side by side in one run.

    python bench/dedup_scale.py --rows 1000000

Builds a Lance table of ``--rows`` rows written by one run (8-d vectors; the check reads ids only),
with 0.1% of the ids written twice, then runs :func:`connectors.lance.dedup.drop_duplicate_ids` on
copies of it three ways: as a first run or overwrite (no older rows can exist, so no lookups), with
the older-row lookups a later append needs, and with everything in one hash partition (what the
check did before it was partitioned). Prints seconds, the driver's peak RSS growth (sampled every 20
ms), and rows removed;
each variant runs in its own process so peaks do not mix.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def build(uri: str, rows: int, run_id: str = "bench-run") -> int:
    import lance

    rng = np.random.default_rng(0)
    dups = rows // 1000
    ids = np.concatenate([np.arange(rows - dups), rng.choice(rows - dups, dups, replace=False)])
    chunk = 200_000
    for start in range(0, rows, chunk):
        part = ids[start : start + chunk]
        n = len(part)
        table = pa.table(
            {
                "id": pa.array([f"doc-{i:09d}" for i in part]),
                "text": pa.array(["t"] * n),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * 8, dtype=np.float32)), 8),
                "content_hash": pa.array(["h"] * n),
                "source_file": pa.array([f"part-{(start + k) // 10000:05d}.parquet" for k in range(n)]),
                "run_id": pa.array([run_id] * n),
            }
        )
        lance.write_dataset(table, uri, mode="append" if start else "create")
    return dups


def _variant(args) -> dict:
    import threading

    import lance  # noqa: F401 - imported before the baseline is taken
    import psutil

    from connectors.lance.dedup import drop_duplicate_ids

    uri, rejects, older_rows, rows_per_pass = args
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    removed = drop_duplicate_ids(
        uri,
        rejects,
        key_column="id",
        id_column="id",
        text_column="text",
        run_id="bench-run",
        older_rows=older_rows,
        rows_per_pass=rows_per_pass,
    )
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    return {
        "seconds": round(seconds, 1),
        "peak_rss_growth_mib": round((peak[0] - before) / 2**20, 1),
        "removed": dict(removed.rows),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    try:
        base = str(work / "base.lance")
        t = time.perf_counter()
        dups = build(base, args.rows)
        print(f"built {args.rows} rows ({dups} ids twice) in {time.perf_counter() - t:.1f}s; CPU: {_cpu()}")
        variants = [
            ("first run / overwrite (no lookups), 2M-row passes", False, 2_000_000),
            ("first run / overwrite, 250k-row passes", False, 250_000),
            ("append (older-row lookups), 2M-row passes", True, 2_000_000),
        ]
        results = {}
        ctx = mp.get_context("spawn")
        for name, older, per_pass in variants:
            copy = work / f"{len(results)}.lance"
            shutil.copytree(base, copy)
            with ctx.Pool(1) as pool:
                results[name] = pool.apply(
                    _variant, ((str(copy), str(work / f"rej{len(results)}.lance"), older, per_pass),)
                )
            print(f"{name:55s} {results[name]}")
        first, small = results[variants[0][0]], results[variants[1][0]]
        print(
            f"ratios: lookups/no-lookups time {results[variants[2][0]]['seconds'] / max(first['seconds'], 1e-9):.2f}x; "
            f"250k-pass/2M-pass memory {small['peak_rss_growth_mib'] / max(first['peak_rss_growth_mib'], 1e-9):.2f}x"
        )
        print(json.dumps({"rows": args.rows, "cpu": _cpu(), "results": results}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
