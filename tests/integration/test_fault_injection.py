"""CI-sized fault injection: bench/fault_injection.py with a small corpus.

Seeds 0, 1, 2 run the three scenarios (overwrite, upsert with delete_missing, two overlapping runs)
and their first kills hit the three targets (driver, encoder actor, write task), each SIGKILLed by pid
mid-run in a real local Ray; then the table must hold every valid document exactly once with its
latest text and the model's vector, and stay readable. CI runs seed 2 (two overlapping runs, a write
task killed: what no other CI test kills; the driver and the encoder are killed in test_failures.py
and test_safe_writes.py), the three seeds are marked slow (9-15 minutes on 2 cores). The full proof
is the script itself with ``--docs 20000 --seeds 60`` (docs/fault_injection.md).

The script runs in its own process, with its own Ray of 6 logical CPUs: the session's 2-CPU Ray is
too small for two overlapping jobs (see ``_start_ray`` in the script), and the script may only kill
processes below itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "seeds, targets",
    [(range(2, 3), {"writer"}), pytest.param(range(0, 3), {"driver", "encoder", "writer"}, marks=pytest.mark.slow)],
    ids=["seed 2", "seeds 0-2"],
)
def test_kills_of_driver_actor_and_writer_lose_and_double_nothing(tmp_path, seeds, targets):
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "fault_injection.py"),
            "--docs",
            "600",
            "--files",
            "20",
            "--seeds",
            str(len(seeds)),
            "--seed-start",
            str(seeds.start),
            "--attempt-timeout",
            "300",
            # No --stall-timeout: the script's 120 s, the jobs' default. No kill may leave a stream
            # waiting (asserted below): seed 2's encoder kill, right after its write-task kill, often
            # finds the actor idle, which Ray Data 2.60 left dead in the pool, the stream stalled until
            # this timeout (63-194 s with 30 s here); restarted now (pipelines.run.plan.ENCODER_ACTOR_OPTIONS).
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("seed", "total", "  "))]
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    total = json.loads(out.read_text())["totals"]

    assert total["seeds_run"] == len(seeds)
    # Kills that happened: the pid was alive, its job still running, and the process gone after.
    assert targets <= set(total["kills_by_target"]), lines
    assert total["kills_injected"] >= len(seeds)
    assert (total["lost"], total["duplicated"], total["extra"]) == (0, 0, 0), lines
    assert (total["wrong_text"], total["wrong_vector"], total["unreadable"]) == (0, 0, 0), lines
    assert total["reject_problems"] == 0 and total["runs_not_finished"] == 0, lines
    assert total["stall_restarts"] == 0, lines  # a killed worker is retried or fails the pass, never waited on
    assert total["seeds_failed"] == [] and proc.returncode == 0, lines
