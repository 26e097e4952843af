"""Resource planning: the encoder pool the cluster has room for, the run's execution groups, and which
errors mean capacity was lost (a worker, a node, a stalled stream) rather than a fault of the data or code.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from pipelines.config import ConfigError
from pipelines.run.preflight import RunPlan

__all__ = [
    "check_index_workers",
    "cpus_held_by_others",
    "execution_groups",
    "lost_worker",
    "pool_that_fits",
    "resources_left",
    "starting_pool",
]

log = logging.getLogger(__name__)


def check_index_workers(workers, cpus: float) -> None:
    """Before any work: Ray's pool for a distributed index build refuses more tasks than the cluster
    has CPUs, which would fail the run after every document was embedded."""
    if workers != "auto" and workers > 1 and workers > cpus:
        raise ConfigError(
            f"index.workers={workers}: the Ray cluster has {cpus:g} CPUs, and each index build "
            f"task takes one; give at most {int(cpus)}, or auto"
        )


def lost_worker(exc: BaseException) -> bool:
    """Whether ``exc`` is Ray's error for a lost actor, worker, node or object (capacity gone, not a
    fault of the data or the code), or Ray Data's for a stream that stopped moving (``compute.
    stall_timeout_s``: seen after a worker was killed mid-task, Ray waiting on a task no longer there)."""
    import ray.exceptions as rx
    from ray.data.exceptions import ExecutionTimeoutError

    if isinstance(exc, ExecutionTimeoutError):
        return True
    if "error raised in its creation task" in str(exc):  # the actor's own constructor failed: a real error
        return False
    lost = (rx.RayActorError, rx.ObjectLostError, rx.NodeDiedError, rx.WorkerCrashedError)
    if isinstance(exc, lost) or isinstance(getattr(exc, "cause", None), lost):
        return True
    # A task whose own call to an actor on the lost node failed (Ray Data lists files through a
    # footer-reader actor) arrives as RayTaskError, or as UnserializableException when Ray cannot
    # rebuild the error: only its text names the cause. Seen when a worker node was killed mid-run.
    return isinstance(exc, (rx.RayTaskError, rx.UnserializableException)) and any(
        name in str(exc) for name in ("ActorDiedError", "NodeDiedError", "ObjectLostError", "its node has died")
    )


def cpus_held_by_others(settle_s: float = 5.0) -> float:
    """CPUs in use before this run starts; the lowest seen over ``settle_s`` while any are, so that
    the actors of a run that just ended in this process (still being released) do not count."""
    import ray

    deadline, held = time.monotonic() + settle_s, float("inf")
    while True:
        held = min(held, ray.cluster_resources().get("CPU", 0) - ray.available_resources().get("CPU", 0))
        if held < 0.05 or time.monotonic() > deadline:
            return max(held, 0.0)
        time.sleep(0.25)


def pool_that_fits(compute, total: Optional[dict] = None) -> int:
    """Encoder actors the live cluster has room for, leaving a CPU for the read and write tasks."""
    import ray

    total = ray.cluster_resources() if total is None else total
    fits = compute.max_actors or compute.actors
    if compute.gpus_per_actor:
        fits = min(fits, int(total.get("GPU", 0) // compute.gpus_per_actor))
    if compute.cpus_per_actor:
        fits = min(fits, int(max(0.0, total.get("CPU", 0) - 1) // compute.cpus_per_actor))
    return max(1, fits)


def execution_groups(files: list[str], rows: dict[str, int], limit: Optional[int]) -> list[list[str]]:
    """``files`` in order, cut into runs of whole files of at most ``limit`` rows (a larger file alone).

    Each group is one Ray Data execution. Measured (bench/scale.py, 1M and 10M rows): the driver's
    RSS grows about 30 MiB per million documents within one execution, native state of Ray per
    block, and four 500k-row runs in one driver grew it by 172, 9, 5 and 2 MiB: what an execution
    holds is given back when it ends. The price of a group is a new encoder pool (model load)."""
    if not limit:
        return [list(files)] if files else []
    groups, current, current_rows = [], [], 0
    for f in files:
        n = rows.get(f, 0)
        if current and current_rows + n > limit:
            groups.append(current)
            current, current_rows = [], 0
        current.append(f)
        current_rows += n
    if current:
        groups.append(current)
    return groups


def resources_left(others_cpus: float) -> dict:
    """The cluster's resources now, less the CPUs others held when the run started."""
    import ray

    total = ray.cluster_resources()
    return {**total, "CPU": max(0.0, total.get("CPU", 0) - others_cpus)}


def starting_pool(plan: RunPlan) -> tuple[Optional[int], dict]:
    """The encoder pool (None: as configured) and the resources a run starts with: the cluster's,
    less what others held when it started (see ``others_cpus``); an error when that leaves the read
    tasks no CPU."""
    c = plan.config
    pool, held = None, plan.others_cpus
    resources = resources_left(held)
    if held >= 0.5:
        pool = min(c.compute.actors, pool_that_fits(c.compute, resources))
        log.info(
            f"{held:g} of the cluster's CPUs are held by others (a service, another job): planning with the "
            f"{resources.get('CPU', 0):g} free, {pool} encoder actor(s)"
        )
        left = resources.get("CPU", 0) - pool * (c.compute.cpus_per_actor or 0)
        if left < 0.25:  # the actors would take the last CPU and the read tasks wait for ever
            raise ConfigError(
                f"the Ray cluster has {resources.get('CPU', 0):g} CPUs free ({held:g} held by others: a service, "
                f"another job); {pool} encoder actor(s) at compute.cpus_per_actor={c.compute.cpus_per_actor:g} "
                f"leave {max(left, 0):g} for the read, tokenize and write tasks: free CPUs, add a node, or "
                "lower compute.cpus_per_actor"
            )
    return pool, resources
