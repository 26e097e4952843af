"""Throughput, side by side in one run: the bare model, sentence-transformers, vLLM, the full job.

    python bench/throughput.py [--docs 20000] [--dtypes float32,bfloat16] [--out out/bench/throughput.json]

Same documents for every contender (the bundled Wikipedia sample, repeated with new ids to reach
``--docs``; lengths as they come), same model (the packaged MiniLM), same threads.

  (a) bare: a plain ``transformers`` forward loop over length-sorted texts, the best of a few batch
      sizes, under ``torch.inference_mode``: the ceiling on this hardware.
  (b) sentence-transformers ``encode`` with its defaults, what a user would run instead.
  (c) vLLM ``LLM.embed`` (pooling runner), when ``vllm`` is importable.
  (d) the full indexing job, Parquet -> Ray Data -> encoder actor -> LanceDB + IVF-RQ, as a
      subprocess: wall time including Ray start, model load, write and index build.
  (e) the Ray Data script a user would write instead (``RAY_DATA_SCRIPT``): ``read_parquet`` ->
      ``map_batches`` with a sentence-transformers actor (batch 256, one actor, torch on every core) ->
      lance-ray's ``write_lance``, no index and no resume; a subprocess with its own Ray, like (d).
      Ray 2.60's own ``Dataset.write_lance`` fails against pylance 14, hence lance-ray's.

Prints docs/s, tokens/s, the ratios d/a and d/b, the job's fixed start-up cost, and for bf16 the
minimum cosine to the float32 vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data" / "sample" / "wiki_vital.parquet"


def corpus(n: int) -> pa.Table:
    base = pq.read_table(SAMPLE, columns=["id", "text"])
    reps = -(-n // base.num_rows)
    texts = (base.column("text").to_pylist() * reps)[:n]
    return pa.table({"id": [f"d{i:07d}" for i in range(n)], "text": texts})


def bare_loop(model_dir: str, texts: list[str], dtype: str, threads: int, device: str = "cpu") -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from pipelines.embed.pooling import mean_pool
    from pipelines.embed.postprocess import l2_normalize

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=getattr(torch, dtype), attn_implementation="sdpa")
    model = model.to(device).eval()
    enc = tok(texts, truncation=True, max_length=256)["input_ids"]
    order = np.argsort([-len(x) for x in enc])

    def run(batch_size: int, subset: np.ndarray) -> tuple[float, np.ndarray]:
        out = np.zeros((len(texts), model.config.hidden_size), np.float32)
        start = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(subset), batch_size):
                idx = subset[s : s + batch_size]
                batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt").to(device)
                hidden = model(**batch).last_hidden_state
                out[idx] = mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy()
        return time.perf_counter() - start, out

    probe = order[:: max(1, len(order) // 512)]
    best = min((run(bs, probe)[0] / len(probe), bs) for bs in (16, 32, 64, 128))[1]
    seconds, vectors = run(best, order)
    return {
        "seconds": seconds,
        "batch_size": best,
        "vectors": l2_normalize(vectors),
        "tokens": int(sum(len(x) for x in enc)),
    }


def st_encode(model_dir: str, texts: list[str], threads: int, device: str = "cpu") -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device=device)
    start = time.perf_counter()
    vectors = model.encode(texts, normalize_embeddings=True)
    return {"seconds": time.perf_counter() - start, "vectors": vectors}


def vllm_embed(model_dir: str, texts: list[str]) -> dict | None:
    try:
        from vllm import LLM
    except ImportError:
        return None
    llm = LLM(model=model_dir, runner="pooling", dtype="float32", enforce_eager=True, max_model_len=256)
    start = time.perf_counter()
    outputs = llm.embed(texts)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "vectors": np.array([o.outputs.embedding for o in outputs], np.float32)}


RAY_DATA_SCRIPT = """
import sys, ray, lance_ray
from sentence_transformers import SentenceTransformer

parquet, out, model_dir, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Embed:
    def __init__(self):
        import torch
        torch.set_num_threads(threads)
        self.model = SentenceTransformer(model_dir, device="cpu")

    def __call__(self, batch):
        batch["vector"] = list(self.model.encode(list(batch["text"]), batch_size=256))
        return batch

ray.init(include_dashboard=False)
ds = ray.data.read_parquet(parquet).map_batches(
    Embed, batch_size=256, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1
)  # one logical CPU for the actor (torch uses every core): the read and write tasks need one too
lance_ray.write_lance(ds, out)
"""


def ray_data_script(parquet: Path, workdir: Path, model_dir: str, threads: int) -> dict:
    """(e): the plain Ray Data script, as a subprocess, wall time; its vectors read back in id order."""
    out = workdir / "plain_ray_data.lance"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-c", RAY_DATA_SCRIPT, str(parquet), str(out), model_dir, str(threads)]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"plain Ray Data script failed: {result.stderr[-2000:]}")
    import lance

    table = lance.dataset(str(out)).to_table(columns=["id", "vector"])
    order = np.argsort(table.column("id").to_numpy(zero_copy_only=False))
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))[order]
    return {"seconds": wall, "vectors": vectors.astype(np.float32)}


def full_job(parquet: Path, workdir: Path, dtype: str, extra: list[str]) -> dict:
    summary = workdir / f"summary-{dtype}.json"
    cmd = [
        sys.executable,
        "-m",
        "jobs.index",
        "--set",
        f"source.path={parquet}",
        "--set",
        f"sink.uri={workdir / 'db'}",
        "--set",
        f"sink.table=bench_{dtype}",
        "--set",
        f"model.dtype={dtype}",
        "--summary-json",
        str(summary),
    ]
    for item in extra:
        cmd += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"job failed: {result.stderr[-2000:]}")
    data = json.loads(summary.read_text())
    import lancedb

    table = lancedb.connect(str(workdir / "db")).open_table(f"bench_{dtype}").to_arrow()
    order = np.argsort(table.column("id").to_numpy(zero_copy_only=False))
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))[order]
    return {"seconds": wall, "embed_seconds": data["embed_seconds"], "vectors": vectors.astype(np.float32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu", help="cpu or cuda, for (a) and (b)")
    ap.add_argument(
        "--job-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config for the full job, e.g. compute.gpus_per_actor=1",
    )
    ap.add_argument("--skip-ray-data", action="store_true", help="leave out (e), the plain Ray Data script")
    ap.add_argument("--out", default=str(ROOT / "out" / "bench" / "throughput.json"))
    args = ap.parse_args()

    from connectors.model_store import resolve_model_dir

    model_dir = str(resolve_model_dir("packaged:all-MiniLM-L6-v2"))
    data = corpus(args.docs)
    texts = data.column("text").to_pylist()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp) / "corpus.parquet"
        pq.write_table(data, parquet)
        for dtype in args.dtypes.split(","):
            bare = bare_loop(model_dir, texts, dtype, args.threads, args.device)
            tokens = bare["tokens"]
            results[f"bare_{dtype}"] = bare
            rows.append((f"(a) transformers loop, {dtype}, batch {bare['batch_size']}", bare["seconds"]))
            if dtype == "float32":
                st = st_encode(model_dir, texts, args.threads, args.device)
                results["st_float32"] = st
                rows.append(("(b) sentence-transformers encode, float32", st["seconds"]))
                vl = vllm_embed(model_dir, texts)
                if vl:
                    results["vllm_float32"] = vl
                    rows.append(("(c) vLLM LLM.embed, float32", vl["seconds"]))
            job = full_job(parquet, Path(tmp), dtype, args.job_set)
            results[f"job_{dtype}"] = job
            rows.append((f"(d) full job (wall, incl. start-up + write + index), {dtype}", job["seconds"]))
            rows.append((f"(d') full job, pipeline only (read..write), {dtype}", job["embed_seconds"]))
            if dtype == "float32" and args.device == "cpu" and not args.skip_ray_data:
                plain = ray_data_script(parquet, Path(tmp), model_dir, args.threads)
                results["ray_data_float32"] = plain
                rows.append(("(e) plain Ray Data script (wall; no index, no resume), float32", plain["seconds"]))

    n = args.docs
    print(f"\n{n} documents, {tokens} tokens (mean {tokens / n:.0f}), {args.threads} threads, {os.cpu_count()} cores\n")
    print(f"{'contender':<66} {'seconds':>8} {'docs/s':>8} {'tokens/s':>9}")
    for name, sec in rows:
        print(f"{name:<66} {sec:8.1f} {n / sec:8.1f} {tokens / sec:9.0f}")
    a, b = results["bare_float32"]["seconds"], results["st_float32"]["seconds"]
    d, dp = results["job_float32"]["seconds"], results["job_float32"]["embed_seconds"]
    print(f"\nratio d/a (job wall vs bare loop, float32):     {a / d:.2f}x the bare model's speed")
    print(f"ratio d'/a (pipeline only vs bare loop):         {a / dp:.2f}x")
    print(f"ratio d/b (job wall vs sentence-transformers):   {b / d:.2f}x")
    print(f"fixed cost of the job (wall - pipeline):          {d - dp:.1f} s")
    if "ray_data_float32" in results:
        e = results["ray_data_float32"]["seconds"]
        print(f"ratio d/e (job wall vs the plain Ray Data script): {e / d:.2f}x its speed, with an index it has not")
    ref = results["bare_float32"]["vectors"]
    for key in results:
        if key.startswith(("job_", "bare_bfloat16", "st_", "vllm_", "ray_data_")) and "vectors" in results[key]:
            cos = (results[key]["vectors"] * ref).sum(axis=1)
            print(f"cosine to float32 bare vectors, {key:<16} min {cos.min():.5f}  mean {cos.mean():.6f}")
    if "bare_bfloat16" in results:
        print(
            f"bf16 speed-up, bare loop: "
            f"{results['bare_float32']['seconds'] / results['bare_bfloat16']['seconds']:.2f}x; "
            f"full job: {d / results['job_bfloat16']['seconds']:.2f}x"
        )
    out = {k: {kk: vv for kk, vv in v.items() if kk != "vectors"} for k, v in results.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"docs": n, "tokens": tokens, "results": out}, indent=2))


if __name__ == "__main__":
    main()
