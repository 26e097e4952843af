"""The bulk indexing run: source -> embedding stages -> Lance fragments -> checkpoints -> index.

Everything that can be checked before the cluster does work is checked first: the config, the source
files and their columns, the model and its dimension (for ``s3://``, that buckets exist and the
credentials are accepted), then, once the run holds the table's lease, what depends on the table:
exists, lineage, dtype, schema, the run log (:mod:`pipelines.run.preflight`).

This module only orchestrates; each step is a module of its own: preflight, resource planning
(:mod:`pipelines.run.resources`), what is left to do (:mod:`pipelines.run.resume`), the embedding
passes (:mod:`pipelines.run.stream`), one row per id (:mod:`pipelines.run.duplicates`), deletes
(:mod:`pipelines.run.delete_missing`), the index step (:mod:`pipelines.vector_index.step`).

Exactly once, across failures (:mod:`pipelines.run.checkpoints` has the details):
- a dead encoder actor or writer task: Ray Data retries the block; only fragments of blocks whose
  output reached the driver are ever committed, so a retried block is never counted twice.
- a dead driver: every ``sink.checkpoint_rows`` rows the driver commits (append/upsert) or stages
  (overwrite/create) the files that are complete, and records them in ``<table>_runs``. Started
  again with the same ``run.id`` (or ``run.resume=true``), the run redoes only the other files.
- another writer: the run holds the table's lease (:mod:`connectors.lance.lease`) and commits only
  onto the version it last saw.
"""

from __future__ import annotations

import logging
import time
import uuid

from connectors.lance.lease import TableLease
from connectors.lance.table import LanceTable
from pipelines.config import PipelineConfig
from pipelines.run import data_context
from pipelines.run.delete_missing import delete_missing
from pipelines.run.duplicates import resolve_duplicates
from pipelines.run.preflight import RunPlan, check_inputs, plan_on_table
from pipelines.run.quiet import init_own_ray
from pipelines.run.resources import check_index_workers, cpus_held_by_others
from pipelines.run.resume import files_to_do
from pipelines.run.stream import embed_and_commit
from pipelines.run.summary import RunSummary
from pipelines.vector_index.step import index_step
from pipelines.vector_index.tuning import index_lineage

__all__ = ["run_index"]

log = logging.getLogger(__name__)


def run_index(config: PipelineConfig, verbose: bool = False) -> RunSummary:
    """Index ``config.source`` into ``config.sink`` and build the vector index; returns the summary.

    Progress is logged (logger ``pipelines``): a line at the start, one per checkpoint, a bar on a
    terminal. Ray Data's own per-operator progress every few seconds only with ``verbose``.

    The whole run holds the table's lease (:mod:`connectors.lance.lease`): a second job on the same
    table fails at once (or waits, ``sink.on_busy=wait``) instead of interleaving its commits.
    """
    started = time.perf_counter()
    inputs = check_inputs(config)
    # The lease is named after the run; a resumed run's id is read from the run log under the lease.
    holder = config.run.id or ("resume" if config.run.resume else uuid.uuid4().hex[:12])
    lease = LanceTable(config.sink.uri, config.sink.table, storage=inputs.storage).lease(
        holder,
        timeout_s=config.sink.lease_timeout_s,
        on_busy=config.sink.on_busy,
        log=log.info,
    )
    inputs_checked = time.perf_counter()
    with lease:
        # Every check that reads the table runs now that no other job can change it (and after a
        # wait for the lease, on the table as the previous holder left it).
        leased = time.perf_counter()
        plan = plan_on_table(inputs, new_run_id=holder)
        lease.holder = plan.run_id
        preflight_seconds = (inputs_checked - started) + (time.perf_counter() - leased)  # not the wait
        _log_start(plan)
        ray_start_seconds = _start_ray(config, verbose)
        # What others (a Serve replica, another job's actors) hold, taken before this run starts anything.
        # Planning with the cluster's total CPUs beside a service gave the encoders the last free CPU
        # and the read tasks none: the stream never started (tests/integration/test_query_service.py).
        plan.others_cpus = cpus_held_by_others()
        summary = _run(plan, lease)
    summary.seconds = time.perf_counter() - started
    summary.preflight_seconds = round(preflight_seconds, 3)
    summary.ray_start_seconds = round(ray_start_seconds, 3)
    return summary


def _log_start(plan: RunPlan) -> None:
    """The run's first line: what it indexes, where to, and how to resume it."""
    compute = plan.config.compute
    actors = compute.actors if not compute.max_actors else f"{compute.actors}-{compute.max_actors}"
    log.info(
        f"run {plan.run_id} {'resumed' if plan.resuming else 'started'}: sink.mode={plan.config.sink.mode}, "
        f"{len(plan.source.files)} files ({sum(plan.source.rows.values()):,} rows) -> table {plan.config.sink.table!r} "
        f"in {plan.config.sink.uri}, {actors} encoder actor(s); if it stops, resume it with --set run.id={plan.run_id} "
        f"(or --set run.resume=true)"
    )


def _start_ray(config: PipelineConfig, verbose: bool) -> float:
    """Ray for the run (started here when not connected yet) and Ray Data's settings; the seconds
    ``ray.init`` took (0 when connected). Fails before any work when ``index.workers`` exceeds the CPUs."""
    import ray

    ray_start_seconds = 0.0
    if not ray.is_initialized():
        ray_started = time.perf_counter()
        # A Ray of the job's own (no RAY_ADDRESS, no `ray start` here) lives as long as the job: its
        # dashboard, which nobody could open in time, took 8 of ray.init's 18.5 s on a loaded 2-core CPU.
        # Ignored when this connects to a cluster, whose head serves the dashboard and metrics.
        init_own_ray(include_dashboard=False)  # without Ray's token notice (pipelines/run/quiet.py)
        ray_start_seconds = time.perf_counter() - ray_started
    data_context.configure(
        ray.data.DataContext.get_current(),
        max_block_mb=config.compute.max_block_mb,
        stall_timeout_s=config.compute.stall_timeout_s,
        verbose=verbose,
    )
    check_index_workers(config.index.workers, ray.cluster_resources().get("CPU", 0))
    return ray_start_seconds


def _run(plan: RunPlan, lease: TableLease) -> RunSummary:
    """The run's steps in order: what is left to do, embed and commit it, one row per id, deletes,
    the index step, the lineage. Each step returns what it counted; the summary is filled here."""
    summary = RunSummary(
        table_uri=plan.config.sink.uri,
        table=plan.config.sink.table,
        rejects_table=plan.table.rejects.name,
        run_id=plan.run_id,
        skipped_files=dict(plan.source.skipped),
        dtype=plan.config.model.dtype,
        dtype_reason=plan.dtype_reason,
        model=plan.model.describe(),
        warnings=plan.model.warnings(),
    )
    runlog = plan.table.runs
    runlog.mark_started(plan.run_id, plan.config.sink.mode)
    todo, committed = files_to_do(plan, runlog)
    summary.resumed_files = len(plan.source.files) - len(todo)
    checkpointer, counts = embed_and_commit(plan, runlog, lease, todo, committed)
    summary.add_embedding(counts)
    lease.check()
    removed, summary.dedup_seconds = resolve_duplicates(plan, checkpointer)
    # A removed row moves from what the run counted it as (embedded, or updated) to rejected.
    summary.rows_written -= sum(removed.rows.values()) - removed.rewritten_rows
    summary.updated -= removed.rewritten_docs
    summary.rejected.update(removed.rows)
    if plan.config.sink.delete_missing:
        lease.check()
        # Opened after the duplicate check: a handle opened before it would read the older version.
        summary.deleted_missing, summary.delete_missing_skipped = delete_missing(plan)
    summary.table_rows = plan.table.open().count_rows()  # what readers see now: after dedup and deletes
    lease.check()
    params, tuning, summary.index_seconds = index_step(
        plan.config,
        rows=summary.table_rows,
        dimension=plan.dimension,
        lineage=plan.lineage,
        storage=plan.storage,
        incremental=plan.config.sink.mode in ("append", "upsert") or plan.resuming,
    )
    summary.index = params.to_dict()
    summary.tuning = tuning.to_dict() if tuning else {}
    lease.check()
    _write_lineage(plan, params, tuning, summary)
    runlog.mark(plan.run_id, "finished")
    summary.version = plan.table.version()
    return summary


def _write_lineage(plan: RunPlan, params, tuning, summary: RunSummary) -> None:
    """What made the table's vectors, its index and this run's counts, stored with the table."""
    counts = {
        "read": summary.rows_read,
        "written": summary.rows_written,
        "skipped_unchanged": summary.skipped,
        "updated_metadata_only": summary.updated,
        "rejected": dict(summary.rejected),
        "truncated": summary.truncated,
        "table_rows": summary.table_rows,
        "run_id": plan.run_id,
    }
    plan.table.update_lineage(plan.lineage, **index_lineage(params, tuning), counts=counts)
