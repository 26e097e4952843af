"""One Ray Data execution of a run: a group of files through the stages, the sink's stats batches back.

A run of many files streams in executions of ``compute.rows_per_execution`` rows
(:func:`pipelines.run.resources.execution_groups`). Whatever process runs an execution's streaming executor
submits and owns its thousands of tasks and blocks, and keeps some native memory for each (Ray's
per-task state, Arrow pools) after the execution ends: measured in the driver, ~13-15 MiB per
million documents that stayed across executions, 1.16x the 1M run's peak at 10M (docs/scaling.md).
So when a run has more than one execution, each runs in a Ray task of its own on the driver's node
(no CPU reserved: it only schedules), whose worker process exits when the execution ends
(``max_calls=1``) and gives all of it back. The driver only receives the stats batches (per-file
counts and fragment descriptions, never rows or vectors) through the task's streaming generator and
checkpoints them. A run of one execution streams in the driver: no process to start.
"""

from __future__ import annotations

from typing import Callable, Iterator

import pyarrow as pa

__all__ = ["stats_batches"]


def _stream(source, columns, files, stages: Callable, pool, cpus: float, context) -> Iterator[pa.Table]:
    """The sink stage's stats batches of ``files`` (``context``: the driver's Ray Data settings)."""
    from ray.data import DataContext

    from pipelines.run.data_context import quiet_logs
    from pipelines.run.plan import apply_stages

    DataContext._set_current(context)
    quiet_logs(context)
    stats = apply_stages(source.read(columns, files, num_cpus=cpus), stages(pool, cpus), read_cpus=cpus)
    yield from stats.iter_batches(batch_format="pyarrow", batch_size=None)


def stats_batches(
    source, columns: list[str], files: list[str], stages: Callable, pool, cpus: float, own_process: bool
) -> Iterator[pa.Table]:
    """The stats batches of one execution over ``files``; ``own_process``: in a one-shot Ray task on
    the driver's node (see the module's docstring) instead of the driver. Errors of the execution
    (a lost worker, a stalled stream) are raised here either way."""
    import ray
    from ray.data import DataContext
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    context = DataContext.get_current()
    if not own_process:
        yield from _stream(source, columns, files, stages, pool, cpus, context)
        return
    task = ray.remote(num_cpus=0, max_calls=1, max_retries=0, num_returns="streaming")(_stream)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    for ref in task.options(scheduling_strategy=here, name="embedpipe-execution").remote(
        source, columns, files, stages, pool, cpus, context
    ):
        yield ray.get(ref)
