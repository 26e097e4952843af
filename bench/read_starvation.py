"""Reproduces the two ways a run stalled on a 2-CPU head: a paused read holding the free CPU, a sink never given one.

    python bench/read_starvation.py [--docs 300000] [--file-rows 50000] [--object-store-mb 80] [--timeout 150]

Starts its own local Ray with 2 CPUs and a small object store, writes ``--docs`` short documents
(bench/scale.py's corpus, files of ``--file-rows`` rows) and indexes them with the tiny model (one
encoder actor, 1 CPU) in a subprocess, and reports whether the run finished within ``--timeout``
seconds, with Ray Data's last progress lines.

1. Files of 50,000 rows, on commit 8810ae9 and earlier: NOT FINISHED. The read -> validate ->
   repartition task kept the second CPU, paused, while Ray Data, its object store budget full, no
   longer took its blocks, so no tokenize task ever got a CPU (a 10M run of bench/scale.py: 3.5M
   rows read, 2,048 tokenized, then nothing). Fixed by letting a task run to its end
   (pipelines/run/data_context.py, ``_max_num_blocks_in_streaming_gen_buffer``).
2. ``--file-rows 10000``, with only that fix: NOT FINISHED. Ray Data reserves each operator a whole
   task's CPU upstream first, so the sink got none until every file was read, and the encoder's
   output filled the object store. Fixed by task stages asking for a share of the free CPUs
   (pipelines/run/plan.py, ``task_cpus``): 300k documents then took 72 s here.
tests/integration/test_multinode.py runs case 2 on a 2-CPU head.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import ray
from memory import tiny_model
from scale import write_corpus
from pathlib import Path
work = Path({work!r})
write_corpus({docs}, {file_rows}, work / "corpus")
model = tiny_model(work)
ray.init(address="local", num_cpus=2, object_store_memory={store} * 2**20, include_dashboard=False,
         log_to_driver=False, _temp_dir={ray_dir!r})
from pipelines.config import load_config
from pipelines.run.runner import run_index
t = time.time()
s = run_index(load_config(overrides=[f"source.path={{work / 'corpus'}}", f"sink.uri={{work / 'db'}}", "sink.table=t",
                                     f"model.path={{model}}", "index.type=none"]))
print("FINISHED", s.rows_written, "rows in", round(time.time() - t, 1), "s", flush=True)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=300_000)
    ap.add_argument("--object-store-mb", type=int, default=80)
    ap.add_argument("--timeout", type=int, default=150)
    ap.add_argument("--file-rows", type=int, default=50_000, help="rows per Parquet file")
    args = ap.parse_args()
    import psutil

    ray_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # this run's Ray only: its processes name it
    with tempfile.TemporaryDirectory() as tmp:
        code = CHILD.format(
            root=str(ROOT),
            bench=str(ROOT / "bench"),
            work=tmp,
            docs=args.docs,
            file_rows=args.file_rows,
            store=args.object_store_mb,
            ray_dir=ray_dir,
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # The driver's Ray (raylet, GCS, workers) are its descendants: stop them all, and only them.
            for child in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            out, _ = proc.communicate()
        lines = out.splitlines()
        progress = [line.split("--", 1)[-1] for line in lines if "logging_progress.py:23" in line][-10:]
        finished = [line for line in lines if line.startswith("FINISHED")]
        print("\n".join(progress))
        print(
            finished[0]
            if finished
            else f"NOT FINISHED within {args.timeout}s ({args.docs} docs, "
            f"{args.object_store_mb} MiB object store, 2 CPUs)"
        )
    shutil.rmtree(ray_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
