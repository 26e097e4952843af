"""Peak resident memory of the driver and of each Ray worker, for two corpus sizes 10x apart.

    python bench/memory.py [--sizes 10000,100000]

Short documents (sentences of the bundled Wikipedia sample, repeated with new ids to reach each
size) are indexed by the full job in a subprocess that starts its own local Ray. Every 0.2 s the
resident memory of the driver and of every process below it (raylet, GCS, workers: Ray starts them
as the driver's descendants) is sampled; the table shows each role's peak. Flat means the 10x
corpus stays within 1.2x: streaming, bounded queues, no whole-dataset materialisation in the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "wiki_vital.parquet"


def short_docs(n: int) -> pa.Table:
    sentences = []
    for text in pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist():
        sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 20]
    texts = [sentences[i % len(sentences)] for i in range(n)]
    return pa.table({"id": [f"s{i:08d}" for i in range(n)], "text": texts})


def role(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "EncodeStage" in cmd:
        return "encoder actor"
    if "FragmentWriter" in cmd:
        return "write tasks"
    if "index_table" in cmd:
        return "index task"
    if "ray::" in cmd and ("Read" in cmd or "ListFiles" in cmd):
        return "read tasks"
    if "ray::IDLE" in cmd or "default_worker" in cmd or "ray::" in cmd:
        return "other ray workers"
    if "raylet" in cmd or "gcs_server" in cmd or "plasma" in cmd:
        return "raylet/gcs (incl. object store)"
    return "other ray processes"


def measure(n: int, workdir: Path) -> dict:
    parquet = workdir / f"short-{n}.parquet"
    pq.write_table(short_docs(n), parquet, row_group_size=10_000)
    cmd = [sys.executable, "-m", "jobs.index", "--set", f"source.path={parquet}",
           "--set", f"sink.uri={workdir / 'db'}", "--set", f"sink.table=mem{n}",
           "--summary-json", str(workdir / f"summary-{n}.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(workdir / f"job-{n}.log", "w")  # a file, not a pipe: a full pipe would block the job
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    driver = psutil.Process(proc.pid)
    peaks: dict[str, int] = defaultdict(int)
    per_pid: dict[int, int] = defaultdict(int)
    start = time.time()
    while proc.poll() is None:
        try:
            peaks["driver"] = max(peaks["driver"], driver.memory_info().rss)
            for child in driver.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                per_pid[child.pid] = max(per_pid[child.pid], rss)
                r = role(child)
                peaks[r] = max(peaks[r], rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    log.close()
    if proc.returncode:
        raise SystemExit(f"job failed for n={n}: {(workdir / f'job-{n}.log').read_text()[-2000:]}")
    summary = json.loads((workdir / f"summary-{n}.json").read_text())
    return {"n": n, "seconds": time.time() - start, "peaks_mib": {k: v / 2**20 for k, v in peaks.items()},
            "rows_written": summary["rows_written"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(n, Path(tmp)) for n in sizes]
    roles = sorted({r for res in results for r in res["peaks_mib"]})
    print(f"\npeak resident memory (MiB); job wall time: " + ", ".join(f"{r['n']} docs {r['seconds']:.0f}s" for r in results))
    print(f"{'process':<34}" + "".join(f"{r['n']:>12}" for r in results) + f"{'ratio':>8}")
    for name in roles:
        vals = [r["peaks_mib"].get(name, 0.0) for r in results]
        ratio = vals[-1] / vals[0] if vals[0] else float("nan")
        print(f"{name:<34}" + "".join(f"{v:12.0f}" for v in vals) + f"{ratio:8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
