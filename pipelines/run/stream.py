"""The run's embedding passes: its files, in execution groups, streamed through the stages into checkpoints.

A lost actor, worker or node (or a stream that stopped moving) fails an execution; then the files
not finished are read again, with as many encoder actors as the cluster has room for now, up to
``MAX_PASSES`` times in all. A staged run (create/overwrite) is published in one commit at the end.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Optional

from connectors import columns as C
from connectors import lance_lookup, lance_sink, lance_writer
from connectors.run_log import RunLog
from connectors.table_lease import TableLease
from pipelines.config import PipelineConfig
from pipelines.lineage import vector_key
from pipelines.run.checkpoints import Checkpointer
from pipelines.run.execution import stats_batches
from pipelines.run.plan import Stage, embedding_stages, task_cpus
from pipelines.run.preflight import RunPlan
from pipelines.run.progress import Progress
from pipelines.run.prometheus import RunMetrics
from pipelines.run.resources import execution_groups, lost_worker, pool_that_fits, resources_left, starting_pool
from pipelines.run.revisions import latest_revisions
from pipelines.run.summary import EmbedCounts

__all__ = ["MAX_PASSES", "embed_and_commit", "revision_column"]

log = logging.getLogger(__name__)


MAX_PASSES = 4  # 1 + the times a run starts over on the files it had not finished, after losing workers


def revision_column(c: PipelineConfig) -> str:
    """The table column that orders revisions of one id (``sink.revision_by``)."""
    return C.SOURCE_FILE if c.sink.revision_by == "path" else c.sink.revision_by


def embed_and_commit(
    plan: RunPlan, runlog: RunLog, lease: TableLease, todo: list[str], committed: bool
) -> tuple[Checkpointer, EmbedCounts]:
    """Stream ``todo`` through the stages into checkpoints; a staged run is published at the end.
    Returns the checkpointer and what the passes counted."""
    counts = EmbedCounts()
    started = time.perf_counter()
    checkpointer = _checkpointer(plan, runlog, lease, todo, counts)
    if todo and not committed:
        try:
            counts.passes = _embed(plan, todo, _stages(plan, _existing_rows(plan, checkpointer)), checkpointer)
            checkpointer.finish(todo)
        finally:
            checkpointer.progress.clear()
    if plan.staged and not committed:
        checkpointer.publish(lance_sink.REJECT_SCHEMA)
    counts.checkpoints = checkpointer.checkpoints
    counts.checkpoint_timings = checkpointer.timings
    counts.seconds = time.perf_counter() - started
    return checkpointer, counts


def _checkpointer(plan: RunPlan, runlog: RunLog, lease: TableLease, todo: list[str], counts: EmbedCounts):
    """The run's checkpointer; each sink stats row it receives goes into ``counts`` and the run's metrics."""
    c = plan.config
    options = plan.sink_options
    total = sum(plan.source.rows.get(f, 0) for f in todo)
    metrics = RunMetrics(plan.run_id, c.sink.table, total)
    return Checkpointer(
        run_id=plan.run_id,
        runlog=runlog,
        table_uri=plan.table_uri,
        rejects_uri=plan.rejects_uri,
        table_schema=plan.table_schema,
        expected_rows=plan.source.rows,
        identity=plan.source.identity,
        staged=plan.staged,
        checkpoint_rows=c.sink.checkpoint_rows,
        table_version=lance_sink.table_version(c.sink.uri, c.sink.table, options),
        rejects_version=lance_sink.table_version(c.sink.uri, lance_sink.rejects_table(c.sink.table), options),
        on_batch=lambda row: _count_batch(counts, row, metrics),
        before_commit=lease.check,
        storage_options=options,
        progress=Progress(total),
        on_checkpoint=lambda timing, done: metrics.checkpoint(timing["commit_s"], _data_bytes(done)),
        storage=plan.storage,
    )


def _existing_rows(plan: RunPlan, checkpointer: Checkpointer):
    """Where an upsert run reads the table's rows as they were (None: not an upsert, or no table yet)."""
    c = plan.config
    if c.sink.mode != "upsert" or checkpointer.table_version is None:
        return None
    key = "doc_id" if c.embed.long_text == "chunk" else c.source.id_column
    return lance_lookup.ExistingRows(
        plan.table_uri,
        checkpointer.table_version,
        key,
        plan.sink_options,
        revision_column=revision_column(c),
        metadata_columns=c.source.metadata_columns,
    )


def _stages(plan: RunPlan, existing) -> Callable[[Optional[int], float], list[Stage]]:
    """The run's stages for an encoder pool (None: as configured) and the CPUs of a read/write task."""
    import ray

    c = plan.config
    latest = None
    if c.sink.mode == "upsert" and existing is not None and len(plan.source.files) > 1:
        revision = None if c.sink.revision_by == "path" else c.sink.revision_by
        latest = ray.put(latest_revisions(plan.source, c.source.id_column, revision, plan.source.files))
    lineage_key = vector_key(plan.lineage, c)

    def stages(pool: Optional[int], cpus: float) -> list[Stage]:
        return [
            *embedding_stages(
                c,
                max_tokens=plan.max_tokens,
                dimension=plan.dimension,
                lineage_key=lineage_key,
                existing=existing,
                storage=plan.storage,
                latest=latest,
                pool=pool,
                cpus=cpus,
                run_id=plan.run_id,
            ),
            _sink_stage(plan, cpus, existing),
        ]

    return stages


def _embed(plan: RunPlan, todo: list[str], stages, checkpointer: Checkpointer) -> int:
    """``todo`` streamed in its execution groups; returns the passes made over again after lost workers."""
    start = starting_pool(plan)
    groups = execution_groups(todo, plan.source.rows, plan.config.compute.rows_per_execution)
    passes = 0
    for number, group in enumerate(groups, 1):
        if len(groups) > 1:
            log.info(f"execution {number} of {len(groups)}: {len(group)} file(s)")
        passes += _stream(plan, group, stages, checkpointer, start, own_process=len(groups) > 1)
    return passes


def _stream(
    plan: RunPlan,
    files: list[str],
    stages,
    checkpointer: Checkpointer,
    start: tuple,
    own_process: bool = False,
) -> int:
    """Stream ``files`` through ``stages(pool, cpus)`` into the checkpointer, starting with ``start``'s
    pool and resources (``own_process``: the execution runs in a task of its own, see
    :mod:`pipelines.run.execution`). A lost actor, worker or node fails the stream; then the files
    not finished are read again, with as many encoder actors as the cluster has room for now, up to
    ``MAX_PASSES`` times in all. Returns the passes made over again."""
    from ray.data.exceptions import ExecutionTimeoutError

    c = plan.config
    columns = [c.source.id_column, c.source.text_column, *c.source.metadata_columns]
    pool, resources = start
    held = plan.others_cpus
    passes = 0
    for attempt in range(1, MAX_PASSES + 1):
        try:
            # Only per-file counts and fragment descriptions reach the driver, never rows or vectors.
            cpus = task_cpus(c.compute, resources.get("CPU", 0), pool)
            for batch in stats_batches(plan.source, columns, files, stages, pool, cpus, own_process):
                for row in batch.to_pylist():
                    checkpointer.add(row)
            return passes
        except Exception as exc:  # noqa: BLE001 - only a lost worker starts a pass over; the rest is raised
            if not lost_worker(exc):
                raise
            files = checkpointer.drop_incomplete(files)
            if not files:
                return passes
            if attempt == MAX_PASSES:
                raise
            resources = resources_left(held)  # what is left of the cluster now
            pool = pool_that_fits(c.compute, resources)
            passes += 1
            what = (
                f"the stream made no progress for compute.stall_timeout_s={c.compute.stall_timeout_s:g}s"
                if isinstance(exc, ExecutionTimeoutError)
                else f"a worker was lost ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            )
            log.info(
                f"{what}; reading the {len(files)} unfinished files again with {pool} encoder actor(s), what "
                f"the cluster has room for"
            )


def _data_bytes(done) -> int:
    """Bytes of the table data files of a checkpoint's files (their Lance fragments' files)."""
    return sum(f.file_size_bytes or 0 for d in done for fragment in d.fragments for f in fragment.files)


def _count_batch(counts: EmbedCounts, row: dict, metrics: RunMetrics) -> None:
    """One sink stats row (a file's rows of one batch) into the run's counts and metrics."""
    batch = (row["rows"], row["written"], json.loads(row["rejected"]), row["tokens"], row["truncated"], row["skipped"])
    counts.add_batch(*batch, updated=row["updated"])
    metrics.batch(*batch)
    counts.add_placement(json.loads(row["encoders"]), row["writer_node"])


def _sink_stage(plan: RunPlan, cpus: float = 1.0, existing=None) -> Stage:
    """The write stage; ``existing`` (upsert runs) is where it reads the rows a metadata-only change rewrites."""
    c = plan.config
    writer = lance_writer.FragmentWriter(
        table_uri=plan.table_uri,
        rejects_uri=plan.rejects_uri,
        schema=plan.table_schema,
        id_column=c.source.id_column,
        text_column=c.source.text_column,
        run_id=plan.run_id,
        storage_options=plan.sink_options,
        existing=existing,
        metadata_columns=c.source.metadata_columns,
    )
    return Stage("sink", writer, map_kwargs=dict(batch_size=c.sink.rows_per_fragment, num_cpus=cpus))
