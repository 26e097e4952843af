"""The job at 1M and 10M documents: the pipeline's own cost, per stage and as it grows.

    python bench/scale.py [--sizes 1000000 10000000] [--file-rows 50000] [--out FILE]

Documents are short (two runs of 3 to 6 words from random places of the bundled Wikipedia sample,
about 16 tokens, so 10M of them fit in this machine's time: fewer tokens per document, not fewer
documents; all but a handful distinct), in Parquet files of ``--file-rows`` rows, and the model is a
2-layer, 32-wide BERT with MiniLM's tokenizer
(bench/memory.py's tiny model): what is measured is the pipeline around the forward pass.

1. **Per-stage rates, one core.** The job's own stage objects (``embedding_stages`` and the sink's
   ``FragmentWriter``, built from the same config) run one after another in this process on one
   file, with one thread for Arrow and torch: docs/s per core of read, validate, tokenize and write,
   and of the tiny encoder for reference. A cluster needs (docs/s target) / (rate) cores per stage.
2. **The whole job** (``jobs.index``, ``sink.mode=append`` so every checkpoint is a table commit)
   on a Ray head this script starts, for each size: wall time, docs/s, the driver's peak RSS (every
   0.2 s), the median time of a checkpoint's commits and of its run-log records over the first and
   the last ten checkpoints (and the slowest), the duplicate-id check and the index step, and the
   bytes Ray's object store spilled to disk (``ray memory --stats-only``).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench._machine import cpu  # noqa: E402

SAMPLE = ROOT / "data" / "sample" / "wiki_vital.parquet"
RAY = str(Path(sys.executable).parent / "ray")  # the CLI of this environment's Ray


def write_corpus(n: int, file_rows: int, out: Path) -> None:
    """``n`` documents of two runs of 3-6 consecutive words of the sample from random places (all but
    a handful distinct, as in a real corpus: duplicate vectors would make exact neighbours ties),
    unique ids, in files of ``file_rows`` rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = " ".join(pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist()).split()
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    for i, start in enumerate(range(0, n, file_rows)):
        m = min(file_rows, n - start)
        at, length = rng.integers(0, len(words) - 6, (2, m)), rng.integers(3, 7, (2, m))
        texts = [
            " ".join(words[a : a + w] + words[b : b + v])
            for a, b, w, v in zip(at[0].tolist(), at[1].tolist(), length[0].tolist(), length[1].tolist())
        ]
        pq.write_table(
            pa.table({"id": [f"d{k:09d}" for k in range(start, start + m)], "text": texts}),
            out / f"part-{i:05d}.parquet",
            row_group_size=min(m, 10_000),
        )


def job_config(corpus: Path, db: Path, table: str, model: Path, extra: tuple[str, ...] = ()) -> list[str]:
    # No recall tuning: the tiny model's random-weight 32-dim vectors are not separable enough for
    # 4-byte PQ codes to reach 0.95 at any setting, so tuning would walk its whole grid (140
    # settings, 159 s at 1M); bench/tuning.py measures tuning on real vectors.
    return [
        f"source.path={corpus}",
        f"sink.uri={db}",
        f"sink.table={table}",
        "sink.mode=append",
        f"model.path={model}",
        "index.target_recall=null",
        *extra,
    ]


def stage_rates(corpus: Path, db: Path, model: Path) -> dict:
    """docs/s on one core of each stage the job runs, on the corpus's first file."""
    os.environ.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        RAYON_NUM_THREADS="1",
        LANCE_CPU_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    from pipelines.config import load_config
    from pipelines.lineage import vector_key
    from pipelines.run.plan import embedding_stages
    from pipelines.run.preflight import preflight
    from pipelines.run.stream import _sink_stage

    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    config = load_config(overrides=job_config(corpus, db, "rates", model))
    plan = preflight(config)
    config = plan.config  # the model's auto settings settled, as the run settles them
    stages = {
        s.name: s
        for s in embedding_stages(
            config, max_tokens=plan.max_tokens, dimension=plan.dimension, lineage_key=vector_key(plan.lineage, config)
        )
    }
    encode = stages["encode"]
    encoder = encode.fn(**encode.constructor_kwargs)
    writer = _sink_stage(plan).fn
    block = config.compute.block_rows

    def chain(path: Path) -> dict:
        """Each stage's docs/s on one core over the file at ``path``, and the tokens it made."""
        seconds = dict.fromkeys(["read", "validate", "tokenize", "encode (tiny model)", "write"], 0.0)

        def timed(name, fn, *args):
            t = time.perf_counter()
            out = fn(*args)
            seconds[name] += time.perf_counter() - t
            return out

        table = timed("read", lambda: pq.read_table(path, use_threads=False))
        table = table.append_column("path", pa.array([str(path)] * table.num_rows))
        valid = timed("validate", stages["validate"].fn, table)
        written = tokens = 0
        for start in range(0, valid.num_rows, block):
            ids = timed("tokenize", stages["tokenize"].fn, valid.slice(start, block))
            tokens += pc.sum(pc.list_value_length(ids.column("_input_ids"))).as_py()
            stats = timed("write", writer, timed("encode (tiny model)", encoder, ids))
            written += sum(stats.column("rows").to_pylist())
        assert written == table.num_rows, (written, table.num_rows)
        rates = {name: table.num_rows / s for name, s in seconds.items()}
        cpu_side = sum(v for k, v in seconds.items() if not k.startswith("encode"))
        rates["read+validate+tokenize+write"] = table.num_rows / cpu_side
        rates["tokens per doc"] = tokens / table.num_rows
        return rates

    first = sorted(corpus.glob("*.parquet"))[0]
    short = chain(first)
    # 500-token documents (about 390 words each), what a budget for long texts needs.
    words = " ".join(pq.read_table(first, columns=["text"]).column("text").to_pylist()).split()
    words = words * (2000 * 390 // len(words) + 1)
    long_path = db.parent / "long-docs.parquet"
    pq.write_table(
        pa.table(
            {
                "id": [f"long{i}" for i in range(2000)],
                "text": [" ".join(words[i * 390 : (i + 1) * 390]) for i in range(2000)],
            }
        ),
        long_path,
    )
    return {"short": short, "500-token": chain(long_path)}


def spilled_bytes(address: str, env: dict) -> int:
    out = subprocess.run(
        [RAY, "memory", "--stats-only", "--address", address], capture_output=True, text=True, cwd=ROOT, env=env
    ).stdout
    found = re.search(r"Spilled (\d+) MiB", out)
    return int(found.group(1)) * 2**20 if found else 0


def run_job(n: int, corpus: Path, db: Path, model: Path, workdir: Path, timeout: float, extra=()) -> dict:
    import psutil

    from tests.helpers.ray_head import LocalRayHead

    head = LocalRayHead(num_cpus=2)  # a head of its own: the spill figure is this run's alone
    try:
        address = f"127.0.0.1:{head.gcs_port}"
        env = {**head.env, "RAY_ADDRESS": address, "HF_HUB_OFFLINE": "1"}
        summary_path = workdir / f"summary-{n}.json"
        cmd = [sys.executable, "-m", "jobs.index", "--summary-json", str(summary_path)]
        for item in job_config(corpus, db, f"scale{n}", model, tuple(extra)):
            cmd += ["--set", item]
        log = open(workdir / f"job-{n}.log", "w")
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        driver, peak, series = psutil.Process(proc.pid), 0, []
        while proc.poll() is None:
            try:
                rss = driver.memory_info().rss
                peak = max(peak, rss)
                if time.time() - started >= 10 * len(series):  # every 10 s: where in the run it grows
                    series.append(round(rss / 2**20))
            except psutil.NoSuchProcess:
                pass
            if time.time() - started > timeout:  # a stalled stream (docs/scaling.md) would wait forever
                proc.kill()
                raise SystemExit(
                    f"job for n={n} still running after {timeout}s: stopped; its log: "
                    f"{(workdir / f'job-{n}.log').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        wall = time.time() - started
        log.close()
        if proc.returncode:
            raise SystemExit(f"job failed for n={n}: {(workdir / f'job-{n}.log').read_text()[-3000:]}")
        spilled = spilled_bytes(address, env)
    finally:
        head.stop()
    s = json.loads(summary_path.read_text())
    timings = s["checkpoint_timings"]

    def median(rows, key):  # ms; a median, so one garbage-collection pause does not read as growth
        values = sorted(t[key] for t in rows) or [0.0]
        return 1e3 * values[len(values) // 2]

    def rate(rows):  # docs/s between the first and the last checkpoint of ``rows``
        return (rows[-1]["rows"] - rows[0]["rows"]) / max(1e-9, rows[-1]["at_s"] - rows[0]["at_s"])

    tenth = max(2, len(timings) // 10)

    return dict(
        docs=n,
        wall_s=wall,
        embed_s=s["embed_seconds"],
        docs_per_s=s["rows_written"] / s["embed_seconds"],
        written=s["rows_written"],
        table_rows=s["table_rows"],
        driver_peak_rss_mib=peak / 2**20,
        driver_rss_every_10s_mib=series,
        checkpoints=len(timings),
        commit_ms_first=median(timings[:10], "commit_s"),
        commit_ms_last=median(timings[-10:], "commit_s"),
        runlog_ms_first=median(timings[:10], "runlog_s"),
        runlog_ms_last=median(timings[-10:], "runlog_s"),
        commit_ms_max=1e3 * max((t["commit_s"] for t in timings), default=0.0),
        runlog_ms_max=1e3 * max((t["runlog_s"] for t in timings), default=0.0),
        checkpoint_timings=timings,
        docs_per_s_first=rate(timings[:tenth]) if len(timings) >= 4 else None,
        docs_per_s_last=rate(timings[-tenth:]) if len(timings) >= 4 else None,
        dedup_s=s["dedup_seconds"],
        index_s=s["index_seconds"],
        index_build_s=s["index"].get("build_seconds"),
        tuning_s=(s.get("tuning") or {}).get("seconds"),
        spilled_bytes=spilled,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--file-rows", type=int, default=50_000)
    ap.add_argument("--workdir", default=None, help="keep corpora and tables here (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--job-timeout", type=float, default=3 * 3600, help="stop a job still running after this many s")
    ap.add_argument("--set", action="append", default=[], help="one more job override (KEY=VALUE), repeatable")
    ap.add_argument("--rates-only", action="store_true", help="only the per-stage rates (one file of the first size)")
    args = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: still stop the Ray head (finally)
    from memory import tiny_model

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        model = tiny_model(work)
        corpora = {}
        for n in args.sizes:
            t = time.perf_counter()
            corpora[n] = work / f"corpus-{n}"
            write_corpus(n, args.file_rows, corpora[n])
            print(f"{n} documents written in {time.perf_counter() - t:.0f}s", flush=True)
        rates = stage_rates(corpora[args.sizes[0]], work / "rates-db", model)
        print(f"\nper-stage rates, docs/s on one core ({cpu()}):")
        print(f"  {'stage':<32}{'short docs':>12}{'500-token docs':>16}")
        for name in rates["short"]:
            print(f"  {name:<32}{rates['short'][name]:>12,.0f}{rates['500-token'][name]:>16,.0f}")
        tokens = rates["500-token"]["read+validate+tokenize+write"] * rates["500-token"]["tokens per doc"]
        print(f"  CPU side on 500-token docs: {tokens:,.0f} tokens/s per core", flush=True)
        if args.rates_only:
            return
        runs = []
        for n in args.sizes:
            runs.append(run_job(n, corpora[n], work / "db", model, work, args.job_timeout, args.set))
            r = runs[-1]
            rss = r["driver_rss_every_10s_mib"]
            print(
                f"\n{n} docs: job {r['wall_s']:.0f}s, {r['docs_per_s']:,.0f} docs/s (first tenth of the checkpoints "
                f"{r['docs_per_s_first'] or 0:,.0f}, last tenth {r['docs_per_s_last'] or 0:,.0f}), driver RSS "
                f"{rss[len(rss) // 10] if rss else 0} MiB a tenth into the run, {rss[-1] if rss else 0} at the end, "
                f"peak {r['driver_peak_rss_mib']:.0f} MiB, {r['checkpoints']} checkpoints, commit "
                f"{r['commit_ms_first']:.0f} -> {r['commit_ms_last']:.0f} ms, run log {r['runlog_ms_first']:.0f} -> "
                f"{r['runlog_ms_last']:.0f} ms (medians of the first and last ten; slowest "
                f"{r['commit_ms_max']:.0f} and {r['runlog_ms_max']:.0f} ms), dedup {r['dedup_s']:.1f}s, "
                f"index step {r['index_s']:.0f}s "
                f"(build {r['index_build_s']}s"
                + (f", tuning {r['tuning_s']}s" if r["tuning_s"] is not None else "")
                + f"), spilled {r['spilled_bytes']} B",
                flush=True,
            )
    print(
        f"\n{'docs':>10} {'job s':>7} {'docs/s':>8} {'driver MiB':>11} {'ckpts':>6} {'commit ms':>13} "
        f"{'run log ms':>13} {'dedup s':>8} {'index s':>8} {'spilled':>8}   ({cpu()})"
    )
    for r in runs:
        print(
            f"{r['docs']:>10} {r['wall_s']:>7.0f} {r['docs_per_s']:>8,.0f} {r['driver_peak_rss_mib']:>11.0f} "
            f"{r['checkpoints']:>6} {r['commit_ms_first']:>6.0f}->{r['commit_ms_last']:<6.0f} "
            f"{r['runlog_ms_first']:>6.0f}->{r['runlog_ms_last']:<6.0f} {r['dedup_s']:>8.1f} {r['index_s']:>8.0f} "
            f"{r['spilled_bytes']:>8}"
        )
    if len(runs) > 1:
        print(
            f"driver peak RSS {runs[-1]['docs']} / {runs[0]['docs']}: "
            f"{runs[-1]['driver_peak_rss_mib'] / runs[0]['driver_peak_rss_mib']:.2f}x"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(dict(cpu=cpu(), overrides=args.set, stage_rates=rates, runs=runs), indent=2)
        )


if __name__ == "__main__":
    main()
