"""CI-sized fault injection: bench/fault_injection.py with a small corpus and one seed per scenario.

Seeds 0, 1, 2 run the three scenarios (overwrite, upsert with delete_missing, two overlapping runs)
and their first kills hit the three targets (driver, encoder actor, write task), each SIGKILLed by pid
mid-run in a real local Ray; then the table must hold every valid document exactly once with its
latest text and the model's vector, and stay readable. The full proof is the script itself with
``--docs 20000 --seeds 60`` (docs/fault_injection.md).

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

ROOT = Path(__file__).resolve().parents[2]


def test_kills_of_driver_actor_and_writer_lose_and_double_nothing(tmp_path):
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
            "3",
            "--seed-start",
            "0",
            "--attempt-timeout",
            "300",
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

    assert total["seeds_run"] == 3
    # Kills that happened: the pid was alive, its job still running, and the process gone after.
    assert set(total["kills_by_target"]) == {"driver", "encoder", "writer"}, lines
    assert total["kills_injected"] >= 3
    assert (total["lost"], total["duplicated"], total["extra"]) == (0, 0, 0), lines
    assert (total["wrong_text"], total["wrong_vector"], total["unreadable"]) == (0, 0, 0), lines
    assert total["reject_problems"] == 0 and total["runs_not_finished"] == 0, lines
    assert total["seeds_failed"] == [] and proc.returncode == 0, lines
