"""When a run's checkpoints come: with Ray Data's blocks in input order (the job's setting) and without.

    python bench/checkpoint_cadence.py [--docs 150000] [--file-rows 30000]

Indexes ``--docs`` short documents (bench/scale.py's corpus) in files of ``--file-rows`` rows with
the tiny model on a local 2-CPU Ray started in this process, ``sink.checkpoint_rows`` one file, once
with ``DataContext.execution_options.preserve_order`` as the job sets it (True) and once with it
False, each in a fresh Ray, and prints when each checkpoint came (seconds into the stream, rows
committed). A checkpoint commits the files that are complete; unordered, every file's blocks were
interleaved and the first file completed near the end of the stream, so a crash before it lost the
run's work (1M documents in bench/scale.py: first checkpoint at 350 s of a 414 s stream).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import sys, json
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import ray
from memory import tiny_model
from pathlib import Path
work = Path({work!r})
model = tiny_model(work)
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
from pipelines.run import data_context
configure = data_context.configure
def configure_then_order(context, **kwargs):
    configure(context, **kwargs)
    context.execution_options.preserve_order = {ordered}
data_context.configure = configure_then_order
from pipelines.config import load_config
from pipelines.run.runner import run_index
s = run_index(load_config(overrides=[f"source.path={corpus}", f"sink.uri={{work / 'db'}}", "sink.table=t",
    "sink.mode=append", f"model.path={{model}}", "index.type=none", "sink.checkpoint_rows={file_rows}"]))
print("RESULT", json.dumps(dict(stream_s=s.embed_seconds, checkpoints=s.checkpoint_timings)), flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=150_000)
    ap.add_argument("--file-rows", type=int, default=30_000)
    args = ap.parse_args()
    import json

    sys.path.insert(0, str(ROOT / "bench"))
    from _machine import cpu
    from scale import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        write_corpus(args.docs, args.file_rows, corpus)
        print(f"{args.docs:,} documents in files of {args.file_rows:,} rows, 2-CPU local Ray ({cpu()}):")
        for ordered in (True, False):
            work = Path(tmp) / f"run-{ordered}"
            work.mkdir()
            code = CHILD.format(
                root=str(ROOT),
                bench=str(ROOT / "bench"),
                work=str(work),
                corpus=str(corpus),
                ordered=ordered,
                file_rows=args.file_rows,
            )
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(out.stdout[-2000:] + out.stderr[-3000:])
            r = json.loads(line[len("RESULT ") :])
            marks = ", ".join(f"{t['rows']:,} at {t['at_s']:.0f}s" for t in r["checkpoints"])
            first = r["checkpoints"][0]["at_s"] / r["stream_s"]
            print(
                f"  preserve_order={str(ordered):<5}  stream {r['stream_s']:.0f}s, first checkpoint at "
                f"{first:.0%} of it; {marks}"
            )


if __name__ == "__main__":
    main()
