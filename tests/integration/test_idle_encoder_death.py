"""An encoder actor SIGKILLed between batches is restarted, and the stream goes on without a stall.

Ray Data 2.60 keeps a dead actor in a fixed-size pool: it gives it no batch and never replaces it
(ray-project/ray#62746). A batch in flight on it fails the stream at once (the run starts over), but
an actor killed while idle left the encoder's queue with no actor, and nothing moved until
``compute.stall_timeout_s`` (bench/fault_injection.py seed 2 kills a write task and then an idle
encoder). With the encoder's actor options (:data:`pipelines.run.plan.ENCODER_ACTOR_OPTIONS`) Ray
restarts the actor and the queued batches go to it. Here a stand-in for the encoder (the same
options, an actor pool of one) is killed before its first batch, while the stage before it holds
every block back.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from pipelines.run.plan import ENCODER_ACTOR_OPTIONS

STALL_TIMEOUT_S = 20  # Ray Data's no-progress guard: the stall the kill used to cause ends in its error
ROWS = 4  # blocks of one row, each a task of 0.1 CPU: the encoder actor (0.5) still fits on 2 CPUs


def _stages():
    """The stage before the encoder and a stand-in for the encoder, made here so that Ray pickles them
    by value (the workers cannot import this test module)."""

    def hold(batch, go: str):
        """A task stage: each block waits until the test lets it through."""
        deadline = time.time() + 60
        while not os.path.exists(go) and time.time() < deadline:
            time.sleep(0.05)
        return batch

    class Encoder:
        """Stands in for EncodeStage: writes its pid when ready (once per start), passes batches on."""

        def __init__(self, pids: str):
            Path(pids, str(os.getpid())).touch()

        def __call__(self, batch):
            return batch

    return hold, Encoder


def test_encoder_actor_killed_between_batches_is_restarted_and_the_stream_finishes(ray_cluster, tmp_path):
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    hold, encoder = _stages()
    go, pids = tmp_path / "go", tmp_path / "pids"
    pids.mkdir()
    context = DataContext.get_current()
    before = context.execution_no_progress_timeout_s
    context.execution_no_progress_timeout_s = STALL_TIMEOUT_S
    result, error = {}, {}

    def consume():
        try:
            ds = ray.data.range(ROWS, override_num_blocks=ROWS).map_batches(
                hold, fn_args=(str(go),), batch_format="pyarrow", num_cpus=0.1
            )
            ds = ds.map_batches(
                encoder,
                fn_constructor_kwargs={"pids": str(pids)},
                batch_format="pyarrow",
                num_cpus=0.5,
                compute=ActorPoolStrategy(size=1),
                **ENCODER_ACTOR_OPTIONS,
            )
            result["ids"] = sorted(r["id"] for r in ds.take_all())
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertions below
            error["exc"] = exc

    try:
        started = time.time()
        worker = threading.Thread(target=consume)
        worker.start()
        while not any(pids.iterdir()) and time.time() - started < 60:
            time.sleep(0.05)
        first = [int(p.name) for p in pids.iterdir()]
        assert len(first) == 1, "the encoder actor never started"
        time.sleep(2)  # the pool has it as a running actor, idle: every block is still held back
        os.kill(first[0], signal.SIGKILL)
        time.sleep(1)  # Ray has seen the death before any block reaches the encoder
        killed = time.time()
        go.touch()
        worker.join(timeout=120)
    finally:
        go.touch()
        context.execution_no_progress_timeout_s = before
    assert not worker.is_alive()
    assert "exc" not in error, f"{type(error.get('exc')).__name__}: {str(error.get('exc'))[:500]}"
    assert result["ids"] == list(range(ROWS))
    assert len(list(pids.iterdir())) == 2  # the killed actor was restarted, not left in the pool dead
    assert time.time() - killed < STALL_TIMEOUT_S  # no stall: the blocks went to the restarted actor
