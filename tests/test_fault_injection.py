"""CI-sized fault injection: bench/fault_injection.py with a small corpus and one seed per scenario.

Seeds 0, 1, 2 run the three scenarios (overwrite, upsert with delete_missing, two overlapping runs)
and their first kills hit the three targets (driver, encoder actor, write task), each SIGKILLed by pid
mid-run in the session's real local Ray; then the table must hold every valid document exactly once
with its latest text and the model's vector, and stay readable. The full proof is the script itself:
``python bench/fault_injection.py --docs 20000 --seeds 30``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "bench" / "fault_injection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kills_of_driver_actor_and_writer_lose_and_double_nothing(ray_cluster, tmp_path):
    script = _script()
    total = script.main(["--docs", "600", "--files", "20", "--seeds", "3", "--seed-start", "0",
                         "--workdir", str(tmp_path / "work"), "--attempt-timeout", "300", "--out", str(tmp_path / "results.json")])

    assert total["seeds_run"] == 3
    # Kills that happened: the pid was alive, the job still running, and the process is gone.
    assert set(total["kills_by_target"]) == {"driver", "encoder", "writer"}, total
    assert total["kills_injected"] >= 3
    assert (total["lost"], total["duplicated"], total["extra"]) == (0, 0, 0), total
    assert (total["wrong_text"], total["wrong_vector"], total["unreadable"]) == (0, 0, 0), total
    assert total["reject_problems"] == 0 and total["runs_not_finished"] == 0, total
    assert total["seeds_failed"] == [], total
