"""Embed the sample corpus with both backends and compare: docs/s, tokens/s, cosine agreement.

    python bench/gpu_backends.py                                  # MiniLM, all 3,000 documents, 1 GPU
    python bench/gpu_backends.py --model Qwen/Qwen3-Embedding-0.6B --pooling last --dtype bfloat16 \
        --set "model.query_prompt=Instruct: ...\\nQuery:" --block-rows 8192
    python bench/gpu_backends.py --cpu --rows 200                 # smoke test of this script on a CPU

Two measurements per backend:

- encoder: the encode stage in this process, engine already started, over the tokenized corpus in
  blocks of --block-rows rows (what one actor sustains);
- pipeline: the whole job (``run_index``: Ray Data read -> tokenize -> one encoder actor -> Lance
  write, no index), from the first row read to the last fragment written; actor start-up included.

Agreement: for every document, the cosine between the two backends' stored vectors (min, p1, mean).
Figures go to stdout and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BACKENDS = ("hf", "vllm")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="packaged:all-MiniLM-L6-v2", help="model.path")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls", "last"])
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="model.dtype (default: float16 on a GPU, float32 with --cpu)",
    )
    p.add_argument("--rows", type=int, default=0, help="first N documents of the sample (0: all)")
    p.add_argument("--block-rows", type=int, default=4096, help="rows per encoder call")
    p.add_argument("--batch-tokens", type=int, default=65536, help="hf backend: padded tokens per forward pass")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override (repeatable)",
    )
    p.add_argument("--cpu", action="store_true", help="no GPU: CPU actors, vLLM's CPU build, small engine")
    p.add_argument("--skip-pipeline", action="store_true", help="only the in-process encoder measurement")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.cpu else "float16")
    return args


def base_overrides(args, backend: str) -> list[str]:
    out = [
        f"model.backend={backend}",
        f"model.path={args.model}",
        f"model.pooling={args.pooling}",
        f"model.dtype={args.dtype}",
        f"compute.block_rows={args.block_rows}",
        f"compute.batch_tokens={args.batch_tokens}",
        "index.type=none",
    ]
    if args.cpu:
        out += ["compute.gpus_per_actor=0", "compute.cpus_per_actor=1"]
        if backend == "vllm":
            out += [
                "model.vllm.in_process=true",
                "model.vllm.enforce_eager=true",
                "model.vllm.gpu_memory_utilization=0.05",
            ]
    else:
        out += ["compute.gpus_per_actor=1", "compute.cpus_per_actor=1"]
    return out + list(args.overrides)


def tokenized_corpus(config, texts):
    """The tokenize stage's output for ``texts`` (document prompt, truncation, EOS), as id lists."""
    from pipelines.embed.hf_encoder import padding_side_for
    from pipelines.embed.tokenizer import eos_to_append, load_tokenizer, tokenize_texts
    from pipelines.run.preflight import preflight

    plan = preflight(config)
    m = config.model
    tokenizer = load_tokenizer(m.path, m.revision, padding_side_for(m))
    ids, _ = tokenize_texts(
        tokenizer,
        [m.document_prompt + t for t in texts],
        plan.max_tokens,
        eos_to_append(tokenizer, m.append_eos, m.pooling),
    )
    return ids, plan


def encoder_run(config, ids, plan, block_rows):
    from pipelines.embed.postprocess import postprocess
    from pipelines.run.stages.encode import load_encoder

    started = time.perf_counter()
    encoder = load_encoder(
        config.model, dimension=plan.dimension, normalize=config.embed.normalize, max_tokens=plan.max_tokens
    )
    load_seconds = time.perf_counter() - started
    encoder.embed(ids[: min(64, len(ids))], config.compute.batch_tokens)  # warm-up (kernels, allocator)
    started = time.perf_counter()
    parts = []
    for i in range(0, len(ids), block_rows):
        pooled = encoder.embed(ids[i : i + block_rows], config.compute.batch_tokens)
        parts.append(postprocess(pooled, plan.dimension, config.embed.normalize))
    _sync()
    seconds = time.perf_counter() - started
    if hasattr(encoder, "close"):
        encoder.close()
    del encoder
    _free()
    return np.concatenate(parts), seconds, load_seconds


def pipeline_run(config):
    from pipelines.run.runner import run_index

    summary = run_index(config)
    import lancedb

    table = lancedb.connect(config.sink.uri).open_table(config.sink.table).to_arrow()
    vectors = dict(zip(table.column("id").to_pylist(), table.column("vector").to_pylist()))
    return summary, vectors


def _sync():
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def _free():
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)), "mean": float(cos.mean())}


def environment() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except ImportError:
        info["vllm"] = "not installed"
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from pipelines.config import DEFAULT_SAMPLE, load_config

    sample = pq.read_table(DEFAULT_SAMPLE, columns=["id", "text"])
    if args.rows:
        sample = sample.slice(0, args.rows)
    work = Path(tempfile.mkdtemp(prefix="embedpipe-bench-"))
    corpus = work / "corpus.parquet"
    pq.write_table(sample, corpus)
    texts = sample.column("text").to_pylist()

    results = {"environment": environment(), "documents": len(texts), "args": vars(args), "backends": {}}
    print(f"environment  {json.dumps(results['environment'])}")
    print(f"corpus       {len(texts)} documents from {DEFAULT_SAMPLE}")
    encoded = {}
    for backend in BACKENDS:
        config = load_config(
            overrides=base_overrides(args, backend)
            + [f"source.path={corpus}", f"sink.uri={work / backend}", "sink.table=bench"]
        )
        ids, plan = tokenized_corpus(config, texts)
        tokens = sum(len(x) for x in ids)
        vectors, seconds, load_seconds = encoder_run(config, ids, plan, args.block_rows)
        encoded[backend] = vectors
        row = {
            "encoder": {
                "docs_per_s": len(ids) / seconds,
                "tokens_per_s": tokens / seconds,
                "seconds": seconds,
                "load_seconds": load_seconds,
                "tokens": tokens,
            }
        }
        print(
            f"{backend:5s} encoder   {row['encoder']['docs_per_s']:9.1f} docs/s {row['encoder']['tokens_per_s']:11.0f} "
            f"tokens/s  ({tokens} tokens in {seconds:.1f}s; model/engine load {load_seconds:.1f}s)"
        )
        if not args.skip_pipeline:
            summary, stored = pipeline_run(config)
            secs = max(summary.embed_seconds, 1e-9)
            row["pipeline"] = {
                "docs_per_s": summary.rows_written / secs,
                "tokens_per_s": summary.tokens / secs,
                "seconds": summary.embed_seconds,
                "job_seconds": summary.seconds,
                "rows_written": summary.rows_written,
            }
            row["_stored"] = stored
            print(
                f"{backend:5s} pipeline  {row['pipeline']['docs_per_s']:9.1f} "
                f"docs/s {row['pipeline']['tokens_per_s']:11.0f} "
                f"tokens/s  ({summary.rows_written} rows in {summary.embed_seconds:.1f}s; job {summary.seconds:.1f}s)"
            )
        results["backends"][backend] = row

    results["agreement_encoder"] = agreement(encoded["hf"], encoded["vllm"])
    print(
        "agreement    encoder  cosine min {min:.6f}  p1 {p1:.6f}  mean {mean:.6f}".format(
            **results["agreement_encoder"]
        )
    )
    if not args.skip_pipeline:
        hf, vl = (results["backends"][b].pop("_stored") for b in BACKENDS)
        ids = sorted(hf)
        assert sorted(vl) == ids, "the two tables hold different ids"
        results["agreement_pipeline"] = agreement(
            np.array([hf[i] for i in ids], dtype=np.float32), np.array([vl[i] for i in ids], dtype=np.float32)
        )
        print(
            "agreement    pipeline cosine min {min:.6f}  p1 {p1:.6f}  mean {mean:.6f}".format(
                **results["agreement_pipeline"]
            )
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    ok = results["agreement_encoder"]["min"] >= 0.999
    print(
        "result       " + ("backends agree (min cosine >= 0.999)" if ok else "BACKENDS DISAGREE (min cosine < 0.999)")
    )
    return 0 if ok else 1


if __name__ == "__main__":  # vLLM starts worker processes: the guard keeps them from re-running this
    sys.exit(main())
