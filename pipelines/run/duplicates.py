"""One row per id (``sink.duplicate_ids=reject``): a run's duplicate ids go to the rejects table (in a Ray task)."""

from __future__ import annotations

import time

from connectors.lance.dedup import Removed, drop_duplicate_ids
from pipelines.run.checkpoints import Checkpointer
from pipelines.run.preflight import RunPlan
from pipelines.run.stream import revision_column
from pipelines.run.tasks import task_result

__all__ = ["resolve_duplicates"]


def resolve_duplicates(plan: RunPlan, checkpointer: Checkpointer) -> tuple[Removed, float]:
    """One row per id (``sink.duplicate_ids=reject``): the run's duplicates go to the rejects table.
    Returns the rows removed (per reason, and which were metadata-only rewrites: an upsert counted
    those as ``updated``, not embedded) and the seconds the check took (nothing removed, 0.0: no check)."""
    staged = plan.staged
    removed, seconds = Removed(), 0.0
    upsert = plan.config.sink.mode == "upsert" and not staged
    if plan.config.sink.duplicate_ids == "reject":
        import ray

        dedup_started = time.perf_counter()
        # In a Ray task, not the driver: the check reads every id of the run (2M rows a pass), which
        # at 10M documents added ~140 MiB to the driver's peak (bench/scale.py). Not retried: a lost
        # worker fails the run, whose resume checks again (what a lost driver did before).
        task = ray.remote(num_cpus=1, max_retries=0)(drop_duplicate_ids)
        removed = task_result(
            task.remote(
                plan.table_uri,
                plan.rejects_uri,
                key_column="doc_id" if plan.config.embed.long_text == "chunk" else plan.config.source.id_column,
                id_column=plan.config.source.id_column,
                text_column=plan.config.source.text_column,
                run_id=plan.run_id,
                revision_column=revision_column(plan.config),
                older_rows=not staged and checkpointer.start_version is not None,
                storage_options=plan.sink_options,
                rewritten_since=checkpointer.start_version if upsert else None,
            )
        )
        seconds = round(time.perf_counter() - dedup_started, 3)
    return removed, seconds
