"""The bulk indexing run: source -> embedding stages -> Lance fragments -> checkpoints -> index.

Everything that can be checked before the cluster does work is checked first: the config, the source
files and their columns, the model and its dimension (:func:`check_inputs`; for ``s3://``, that
buckets exist and the credentials are accepted), then, once the run holds the table's lease, what
depends on the table: exists, lineage, dtype, schema, the run log (:func:`plan_on_table`).

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

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors import columns as C
from connectors.lance import table as lance_table
from connectors.lance.commits import delete_run_leftovers, missing_files
from connectors.lance.dedup import drop_duplicate_ids
from connectors.lance.index import IndexParams
from connectors.lance.lease import TableLease
from connectors.lance.lookup import ExistingRows
from connectors.lance.metadata import table_metadata
from connectors.lance.runs import RunLog
from connectors.lance.table import LanceTable, open_dataset
from connectors.lance.write import FragmentWriter
from connectors.model_store import model_fingerprint, resolve_model_dir
from connectors.parquet_source import ParquetSource, open_source
from connectors.storage import Storage, is_s3
from pipelines.config import ConfigError, PipelineConfig
from pipelines.embed.hf_encoder import padding_side_for
from pipelines.embed.precision import planned_device, resolve_dtype
from pipelines.embed.tokenizer import chunk_window, effective_max_tokens, eos_to_append, load_tokenizer
from pipelines.lineage import Lineage, check_compatible, make_lineage, vector_key
from pipelines.run import data_context
from pipelines.run.checkpoints import Checkpointer
from pipelines.run.execution import stats_batches
from pipelines.run.metrics import RunMetrics
from pipelines.run.plan import Stage, embedding_stages, task_cpus
from pipelines.run.progress import Progress
from pipelines.run.revisions import latest_revisions
from pipelines.run.summary import RunSummary
from pipelines.vector_index.params import index_workers
from pipelines.vector_index.step import check_tuning_queries, index_table, read_tuning_queries
from pipelines.vector_index.tuning import TuningResult, index_lineage

__all__ = ["Inputs", "RunPlan", "check_inputs", "index_step", "plan_on_table", "preflight", "run_index"]

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    config: PipelineConfig
    run_id: str
    resuming: bool  # this run id committed before: continue, never overwrite again
    source: ParquetSource
    lineage: Lineage
    max_tokens: int
    dimension: int
    table_schema: pa.Schema
    start_version: Optional[int]  # the table's version when the run began (None: no table)
    storage: Optional[Storage] = None  # endpoint/credentials for s3:// paths, resolved once here
    dtype_reason: str = ""  # why config.model.dtype (resolved from auto here) is what it is
    others_cpus: float = 0.0  # CPUs others (a service, another job) held when the run started
    table: Optional[LanceTable] = None  # the sink's table: its versions, lineage, run log, rejects

    @property
    def sink_options(self) -> Optional[dict]:
        """Lance ``storage_options`` for the sink (None for a local one)."""
        return self.storage.lance_options(self.config.sink.uri) if self.storage else None

    @property
    def table_uri(self) -> str:
        return self.table.path

    @property
    def staged(self) -> bool:
        """create/overwrite runs stage their fragments and publish them in one commit at the end."""
        return self.config.sink.mode in ("create", "overwrite")

    @property
    def rejects_uri(self) -> str:
        return self.table.rejects.path


def _table_schema(config: PipelineConfig, source: ParquetSource, dimension: int, lineage: Lineage) -> pa.Schema:
    src = config.source
    value = pa.float16() if config.embed.vector_dtype == "float16" else pa.float32()
    id_field = source.schema.field(src.id_column)
    chunked = config.embed.long_text == "chunk"
    fields = [
        id_field.with_type(pa.string()) if chunked else id_field,
        pa.field(src.text_column, pa.string()),
        *(source.schema.field(c) for c in src.metadata_columns),
        *([pa.field("doc_id", id_field.type), pa.field("chunk", pa.int32())] if chunked else []),
        pa.field(C.VECTOR, pa.list_(value, dimension)),
        pa.field(C.HASH, pa.string()),
        pa.field(C.SOURCE_FILE, pa.string()),
        pa.field("run_id", pa.string()),
    ]
    return pa.schema(fields, metadata=table_metadata(lineage))


@dataclass
class Inputs:
    """What a run learns before it looks at the table: its source, model, dimension and token limit."""

    config: PipelineConfig
    source: ParquetSource
    storage: Storage
    fingerprint: str
    hidden: int
    dimension: int
    max_tokens: int
    append_eos: bool


def check_inputs(config: PipelineConfig) -> Inputs:
    """The checks that do not depend on the table: config, source files and columns, the model and its
    dimension, the tokens of a chunk (and, for ``s3://``, that buckets exist and credentials work).
    Raises with a message naming the problem."""
    src, sink = config.source, config.sink
    columns = [src.id_column, src.text_column, *src.metadata_columns]
    storage = Storage.resolve(
        config.storage, paths=[src.path, sink.uri, config.model.path, config.index.tuning_queries_path]
    )
    source = open_source(src.path, columns, src.text_column, src.on_bad_file, storage, src.id_column)
    if is_s3(sink.uri):
        storage.probe(sink.uri, "sink.uri")  # a missing bucket or refused credentials, before any work
    if config.index.tuning_queries_path:
        check_tuning_queries(config.index.tuning_queries_path, storage)

    model_dir = resolve_model_dir(config.model.path, config.model.revision, storage)
    tokenizer = load_tokenizer(config.model.path, config.model.revision, padding_side_for(config.model), storage)
    from transformers import AutoConfig

    hidden = int(AutoConfig.from_pretrained(str(model_dir)).hidden_size)
    dimension = config.embed.dimension or hidden
    if dimension > hidden:
        raise ConfigError(f"embed.dimension={dimension} is larger than the model's {hidden} dimensions")
    max_tokens = effective_max_tokens(model_dir, tokenizer, config.model.max_tokens)
    eos_id = eos_to_append(tokenizer, config.model.append_eos, config.model.pooling)
    if config.embed.long_text == "chunk":  # before any row is committed, not in the first tokenize task
        chunk_window(tokenizer, max_tokens, config.model.document_prompt, eos_id, config.embed.chunk_overlap)
    return Inputs(
        config, source, storage, model_fingerprint(model_dir), hidden, dimension, max_tokens, eos_id is not None
    )


def plan_on_table(inputs: Inputs, new_run_id: Optional[str] = None) -> RunPlan:
    """The checks that read the table (exists, lineage, dimension, dtype, schema, the run log) and the
    plan they give. A job runs this while it holds the table's lease: checks made before a wait for
    the lease describe a table that another job may have created or changed meanwhile.

    ``new_run_id``: the id of a new run when the config names none (default: a new random id)."""
    config, storage, source = inputs.config, inputs.storage, inputs.source
    sink = config.sink
    table = LanceTable.at(sink.uri, sink.table, storage)
    version = table.version()
    adding = version is not None and sink.mode in ("append", "upsert")
    existing = table.lineage() if adding else None
    config, dtype_reason = _with_dtype(config, existing)
    lineage = make_lineage(
        config,
        fingerprint=inputs.fingerprint,
        hidden_size=inputs.hidden,
        max_tokens=inputs.max_tokens,
        dimension=inputs.dimension,
        append_eos=inputs.append_eos,
    )

    runlog = table.runs
    run_id = config.run.id
    if config.run.resume:
        run_id = runlog.last_unfinished()
        if run_id is None:
            raise ConfigError(
                f"run.resume=true: table {sink.table!r} in {sink.uri} has no unfinished run "
                "(every run in its log finished)"
            )
    run_id = run_id or new_run_id or uuid.uuid4().hex[:12]
    resuming = runlog.started(run_id)
    if resuming and runlog.mode(run_id) not in (None, sink.mode):
        raise ConfigError(
            f"run {run_id} was started with sink.mode={runlog.mode(run_id)}; resume it with "
            f"the same mode (this config has sink.mode={sink.mode})"
        )
    if sink.mode == "create" and version is not None and not resuming:
        raise lance_table.SinkError(
            f"sink.table={sink.table} already exists in {sink.uri} "
            "(sink.mode=create); use sink.mode=overwrite, append or upsert"
        )
    if adding or (version is not None and resuming):
        existing = existing or table.lineage()
        check_compatible(existing, lineage, "this run's config")
    schema = _table_schema(config, source, inputs.dimension, lineage)
    return RunPlan(
        config,
        run_id,
        resuming,
        source,
        lineage,
        inputs.max_tokens,
        inputs.dimension,
        schema,
        version,
        storage,
        dtype_reason,
        table=table,
    )


def preflight(config: PipelineConfig) -> RunPlan:
    """Check the run can work, before any embedding starts; raises with a message naming the problem.
    (A job checks the inputs first, then the table once it holds the lease: :func:`run_index`.)"""
    return plan_on_table(check_inputs(config))


def _with_dtype(config: PipelineConfig, existing: Optional[Lineage]) -> tuple[PipelineConfig, str]:
    """``config`` with ``model.dtype`` resolved (``auto``: pipelines/embed/precision.py), and why.

    ``existing``: the lineage of the table an append or upsert adds to. Adding to a table keeps the
    dtype its rows were embedded in, so ``auto`` on other hardware does not make every row's content
    hash stale (an upsert would embed the whole table again)."""
    m = config.model
    recorded = existing.model.dtype if existing is not None and existing.model is not None else None
    if m.dtype == "auto" and recorded:
        dtype, why = recorded, f"auto: the dtype table {config.sink.table!r} was embedded in"
    else:
        dtype, why = resolve_dtype(m.dtype, planned_device(m.device, config.compute.gpus_per_actor))
    return config.model_copy(update={"model": m.model_copy(update={"dtype": dtype})}), why


def _open_table(plan: RunPlan):
    """A LanceDB handle on the table's latest version."""
    return plan.table.open()


def _revision_column(c: PipelineConfig) -> str:
    """The table column that orders revisions of one id (``sink.revision_by``)."""
    return C.SOURCE_FILE if c.sink.revision_by == "path" else c.sink.revision_by


def run_index(config: PipelineConfig, verbose: bool = False) -> RunSummary:
    """Index ``config.source`` into ``config.sink`` and build the vector index; returns the summary.

    Progress is logged (logger ``pipelines``): a line at the start, one per checkpoint, a bar on a
    terminal. Ray Data's own per-operator progress every few seconds only with ``verbose``.

    The whole run holds the table's lease (:mod:`connectors.lance.lease`): a second job on the same
    table fails at once (or waits, ``sink.on_busy=wait``) instead of interleaving its commits.
    """
    import ray

    started = time.perf_counter()
    inputs = check_inputs(config)
    c = config
    # The lease is named after the run; a resumed run's id is read from the run log under the lease.
    holder = c.run.id or ("resume" if c.run.resume else uuid.uuid4().hex[:12])
    lease = LanceTable(c.sink.uri, c.sink.table, storage=inputs.storage).lease(
        holder,
        timeout_s=c.sink.lease_timeout_s,
        on_busy=c.sink.on_busy,
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
        ray_start_seconds = 0.0
        actors = c.compute.actors if not c.compute.max_actors else f"{c.compute.actors}-{c.compute.max_actors}"
        log.info(
            f"run {plan.run_id} {'resumed' if plan.resuming else 'started'}: sink.mode={c.sink.mode}, "
            f"{len(plan.source.files)} files ({sum(plan.source.rows.values()):,} rows) -> table {c.sink.table!r} "
            f"in {c.sink.uri}, {actors} encoder actor(s); if it stops, resume it with --set run.id={plan.run_id} "
            f"(or --set run.resume=true)"
        )
        if not ray.is_initialized():
            ray_started = time.perf_counter()
            # A Ray of the job's own (no RAY_ADDRESS, no `ray start` here) lives as long as the job: its
            # dashboard, which nobody could open in time, took 8 of ray.init's 18.5 s on a loaded 2-core CPU.
            # Ignored when this connects to a cluster, whose head serves the dashboard and metrics.
            ray.init(include_dashboard=False)
            ray_start_seconds = time.perf_counter() - ray_started
        data_context.configure(
            ray.data.DataContext.get_current(),
            max_block_mb=c.compute.max_block_mb,
            stall_timeout_s=c.compute.stall_timeout_s,
            verbose=verbose,
        )
        _check_index_workers(c.index.workers, ray.cluster_resources().get("CPU", 0))
        # What others (a Serve replica, another job's actors) hold, taken before this run starts anything.
        # Planning with the cluster's total CPUs beside a service gave the encoders the last free CPU
        # and the read tasks none: the stream never started (tests/integration/test_query_service.py).
        plan.others_cpus = _cpus_held_by_others()
        summary = _run(plan, lease)
    summary.seconds = time.perf_counter() - started
    summary.preflight_seconds = round(preflight_seconds, 3)
    summary.ray_start_seconds = round(ray_start_seconds, 3)
    return summary


def _run(plan: RunPlan, lease: TableLease) -> RunSummary:
    """The run's steps in order: what is left to do, embed and commit it, one row per id, deletes,
    the index step, the lineage."""
    c = plan.config
    summary = RunSummary(
        table_uri=c.sink.uri,
        table=c.sink.table,
        rejects_table=plan.table.rejects.name,
        run_id=plan.run_id,
        skipped_files=dict(plan.source.skipped),
        dtype=c.model.dtype,
        dtype_reason=plan.dtype_reason,
    )
    runlog = plan.table.runs
    runlog.mark_started(plan.run_id, c.sink.mode)
    todo, committed = _files_to_do(plan, runlog, summary)
    checkpointer = _embed_and_commit(plan, runlog, lease, todo, committed, summary)
    lease.check()
    _resolve_duplicates(plan, checkpointer, summary)
    if c.sink.delete_missing:
        lease.check()
        # Opened after the duplicate check: a handle opened before it would read the older version.
        summary.deleted_missing = _delete_missing(plan, summary)
    summary.table_rows = _open_table(plan).count_rows()  # what readers see now: after dedup and deletes
    lease.check()
    params, tuning = _index_step(plan, summary)
    lease.check()
    _write_lineage(plan, params, tuning, summary)
    runlog.mark(plan.run_id, "finished")
    summary.version = plan.table.version()
    return summary


def _files_to_do(plan: RunPlan, runlog: RunLog, summary: RunSummary) -> tuple[list[str], bool]:
    """The files this run still has to embed (all, or what a resumed run has not finished), after
    removing what a resumed run's unfinished commits left; and whether a staged run was committed."""
    options = plan.sink_options
    staged = plan.staged
    committed = staged and "committed" in runlog.kinds(plan.run_id)
    done = runlog.done_files(plan.run_id, with_fragments=staged and not committed)
    # A finished file that was rewritten since is done again; one that is gone stays done (it was read whole).
    changed = [f for f, d in done.items() if f in plan.source.identity and d.identity != plan.source.identity[f]]
    for f in changed:
        del done[f]
    if staged and not committed and done:
        for f in _staged_data_gone(plan, done):
            del done[f]
    todo = [f for f in plan.source.files if f not in done]
    summary.resumed_files = len(plan.source.files) - len(todo)
    if plan.resuming and not staged:
        # Rows of files whose commit died before its bookkeeping, and of finished files redone now.
        redo = sorted(runlog.uncertain_files(plan.run_id) | set(changed))
        delete_run_leftovers(plan.table_uri, plan.run_id, redo, C.SOURCE_FILE, options)
        delete_run_leftovers(plan.rejects_uri, plan.run_id, redo, "file", options)
    return todo, committed


def _staged_data_gone(plan: RunPlan, done: dict) -> list[str]:
    """The files of a resumed staged run whose staged fragments are no longer all in storage (a prune
    removed uncommitted files older than Lance's 7 days, or someone did by hand): they are embedded
    again, so that the final commit never references a file that is not there."""
    table = missing_files(plan.table_uri, [x for d in done.values() for x in d.fragments], plan.storage)
    rejects = missing_files(plan.rejects_uri, [x for d in done.values() for x in d.reject_fragments], plan.storage)
    gone_paths = set(table) | set(rejects)
    if not gone_paths:
        return []
    gone = [
        f
        for f, d in done.items()
        if any(x.path in gone_paths for fragment in (*d.fragments, *d.reject_fragments) for x in fragment.files)
    ]
    log.warning(
        f"run {plan.run_id}: the staged data of {len(gone)} finished file(s) is gone ({len(gone_paths)} data "
        f"file(s), e.g. {sorted(gone_paths)[:2]}; removed by housekeeping?): embedding them again"
    )
    return gone


def _embed_and_commit(
    plan: RunPlan, runlog: RunLog, lease: TableLease, todo: list[str], committed: bool, summary: RunSummary
) -> Checkpointer:
    """Stream ``todo`` through the stages into checkpoints; a staged run is published at the end."""
    import ray

    c = plan.config
    options = plan.sink_options
    staged = plan.staged
    total = sum(plan.source.rows.get(f, 0) for f in todo)
    metrics = RunMetrics(plan.run_id, c.sink.table, total)
    embed_started = time.perf_counter()
    checkpointer = Checkpointer(
        run_id=plan.run_id,
        runlog=runlog,
        table_uri=plan.table_uri,
        rejects_uri=plan.rejects_uri,
        table_schema=plan.table_schema,
        expected_rows=plan.source.rows,
        identity=plan.source.identity,
        staged=staged,
        checkpoint_rows=c.sink.checkpoint_rows,
        table_version=plan.table.version(),
        rejects_version=plan.table.rejects.version(),
        on_batch=lambda row: _count_batch(summary, row, metrics),
        before_commit=lease.check,
        storage_options=options,
        progress=Progress(total),
        on_checkpoint=lambda timing, done: metrics.checkpoint(timing["commit_s"], _data_bytes(done)),
        storage=plan.storage,
    )
    if todo and not committed:
        existing = None
        if c.sink.mode == "upsert" and checkpointer.table_version is not None:
            key = "doc_id" if c.embed.long_text == "chunk" else c.source.id_column
            existing = ExistingRows(
                plan.table_uri,
                checkpointer.table_version,
                key,
                options,
                revision_column=_revision_column(c),
                metadata_columns=c.source.metadata_columns,
            )
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

        try:
            start = _starting_pool(plan)
            groups = execution_groups(todo, plan.source.rows, c.compute.rows_per_execution)
            for number, group in enumerate(groups, 1):
                if len(groups) > 1:
                    log.info(f"execution {number} of {len(groups)}: {len(group)} file(s)")
                _stream(plan, group, stages, checkpointer, summary, start, own_process=len(groups) > 1)
            checkpointer.finish(todo)
        finally:
            checkpointer.progress.clear()
    if staged and not committed:
        checkpointer.publish(lance_table.REJECT_SCHEMA)
    summary.checkpoints = checkpointer.checkpoints
    summary.checkpoint_timings = checkpointer.timings
    summary.embed_seconds = time.perf_counter() - embed_started
    return checkpointer


def _resolve_duplicates(plan: RunPlan, checkpointer: Checkpointer, summary: RunSummary) -> None:
    """One row per id (``sink.duplicate_ids=reject``): the run's duplicates go to the rejects table."""
    c = plan.config
    staged = plan.staged
    if c.sink.duplicate_ids == "reject":
        import ray

        dedup_started = time.perf_counter()
        # In a Ray task, not the driver: the check reads every id of the run (2M rows a pass), which
        # at 10M documents added ~140 MiB to the driver's peak (bench/scale.py). Not retried: a lost
        # worker fails the run, whose resume checks again (what a lost driver did before).
        task = ray.remote(num_cpus=1, max_retries=0)(drop_duplicate_ids)
        removed = _get(
            task.remote(
                plan.table_uri,
                plan.rejects_uri,
                key_column="doc_id" if c.embed.long_text == "chunk" else c.source.id_column,
                id_column=c.source.id_column,
                text_column=c.source.text_column,
                run_id=plan.run_id,
                revision_column=_revision_column(c),
                older_rows=not staged and checkpointer.start_version is not None,
                storage_options=plan.sink_options,
            )
        )
        summary.rows_written -= sum(removed.values())
        summary.rejected.update(removed)
        summary.dedup_seconds = round(time.perf_counter() - dedup_started, 3)


def _index_step(plan: RunPlan, summary: RunSummary):
    """The run's index step (:func:`index_step`); its parameters, tuning and time go into the summary."""
    c = plan.config
    params, tuning, summary.index_seconds = index_step(
        c,
        rows=summary.table_rows,
        dimension=plan.dimension,
        lineage=plan.lineage,
        storage=plan.storage,
        incremental=c.sink.mode in ("append", "upsert") or plan.resuming,
    )
    summary.index = params.to_dict()
    summary.tuning = tuning.to_dict() if tuning else {}
    return params, tuning


def index_step(
    config: PipelineConfig,
    *,
    rows: int,
    dimension: int,
    lineage: dict,
    storage: Optional[Storage] = None,
    incremental: bool = False,
) -> tuple[IndexParams, Optional[TuningResult], float]:
    """The vector index of ``config.sink.table`` (``rows`` rows of ``dimension``, made as ``lineage``
    says), its tuned query defaults and the id index, built in one Ray task; returns the index
    parameters, the tuning result (None when not tuned) and the seconds it took. Recording them in
    the lineage is the caller's (:func:`~pipelines.vector_index.tuning.index_lineage`).

    ``storage``: default resolved from ``config.storage`` for the sink, model and tuning queries.
    ``incremental``: maintain the index after an append/upsert instead of building it anew.
    """
    import ray

    c = config
    if storage is None:
        storage = Storage.resolve(c.storage, paths=[c.sink.uri, c.model.path, c.index.tuning_queries_path])
    # Off the driver: index training and the tuning's exact searches grow with the table.
    queries = None
    if c.index.tuning_queries_path and c.index.target_recall is not None:
        queries = read_tuning_queries(c.index.tuning_queries_path, c.index.tuning_queries, storage)
    # Retried when its worker or node is lost (nothing is committed until the build is done), never
    # on its own errors (Ray retries exceptions only when retry_exceptions is set).
    # A distributed build (index.workers) gives every CPU to its build tasks; the task that starts
    # them only trains on a sample and waits, so it holds none (else it could wait for its own CPU).
    cpus = ray.cluster_resources().get("CPU", 1)
    one_task = index_workers(c.index.workers, rows, cpus) == 1
    task = ray.remote(num_cpus=1 if one_task else 0, max_retries=3)(index_table)
    started = time.perf_counter()
    params, tuning = _get(
        task.remote(
            c.sink.uri,
            c.sink.table,
            c.index,
            id_column=c.source.id_column,
            dimension=dimension,
            incremental=incremental,
            lineage=lineage,
            storage=storage,
            query_texts=queries,
            cpus=cpus,
        )
    )
    return params, tuning, round(time.perf_counter() - started, 2)


def _get(ref):
    """``ray.get`` of one task, raising the task's own error (not Ray's wrapper and its traceback)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause if isinstance(exc.cause, Exception) else exc


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


def _check_index_workers(workers, cpus: float) -> None:
    """Before any work: Ray's pool for a distributed index build refuses more tasks than the cluster
    has CPUs, which would fail the run after every document was embedded."""
    if workers != "auto" and workers > 1 and workers > cpus:
        raise ConfigError(
            f"index.workers={workers}: the Ray cluster has {cpus:g} CPUs, and each index build "
            f"task takes one; give at most {int(cpus)}, or auto"
        )


MAX_PASSES = 4  # 1 + the times a run starts over on the files it had not finished, after losing workers


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


def _cpus_held_by_others(settle_s: float = 5.0) -> float:
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


def _resources_left(others_cpus: float) -> dict:
    """The cluster's resources now, less the CPUs others held when the run started."""
    import ray

    total = ray.cluster_resources()
    return {**total, "CPU": max(0.0, total.get("CPU", 0) - others_cpus)}


def _starting_pool(plan: RunPlan) -> tuple[Optional[int], dict]:
    """The encoder pool (None: as configured) and the resources a run starts with: the cluster's,
    less what others held when it started (see ``others_cpus``); an error when that leaves the read
    tasks no CPU."""
    c = plan.config
    pool, held = None, plan.others_cpus
    resources = _resources_left(held)
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


def _stream(
    plan: RunPlan,
    files: list[str],
    stages,
    checkpointer: Checkpointer,
    summary: RunSummary,
    start: tuple,
    own_process: bool = False,
) -> None:
    """Stream ``files`` through ``stages(pool, cpus)`` into the checkpointer, starting with ``start``'s
    pool and resources (``own_process``: the execution runs in a task of its own, see
    :mod:`pipelines.run.execution`). A lost actor, worker or node fails the stream; then the files
    not finished are read again, with as many encoder actors as the cluster has room for now, up to
    ``MAX_PASSES`` times in all."""
    from ray.data.exceptions import ExecutionTimeoutError

    c = plan.config
    columns = [c.source.id_column, c.source.text_column, *c.source.metadata_columns]
    pool, resources = start
    held = plan.others_cpus
    for attempt in range(1, MAX_PASSES + 1):
        try:
            # Only per-file counts and fragment descriptions reach the driver, never rows or vectors.
            cpus = task_cpus(c.compute, resources.get("CPU", 0), pool)
            for batch in stats_batches(plan.source, columns, files, stages, pool, cpus, own_process):
                for row in batch.to_pylist():
                    checkpointer.add(row)
            return
        except Exception as exc:  # noqa: BLE001 - only a lost worker starts a pass over; the rest is raised
            if not lost_worker(exc):
                raise
            files = checkpointer.drop_incomplete(files)
            if not files:
                return
            if attempt == MAX_PASSES:
                raise
            resources = _resources_left(held)  # what is left of the cluster now
            pool = pool_that_fits(c.compute, resources)
            summary.passes += 1
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


def _count_batch(summary: RunSummary, row: dict, metrics: RunMetrics) -> None:
    """One sink stats row (a file's rows of one batch) into the summary and the run's metrics."""
    counts = (row["rows"], row["written"], json.loads(row["rejected"]), row["tokens"], row["truncated"], row["skipped"])
    summary.add_batch(*counts, updated=row["updated"])
    metrics.batch(*counts)
    summary.add_placement(json.loads(row["encoders"]), row["writer_node"])


def _sink_stage(plan: RunPlan, cpus: float = 1.0, existing=None) -> Stage:
    """The write stage; ``existing`` (upsert runs) is where it reads the rows a metadata-only change rewrites."""
    c = plan.config
    writer = FragmentWriter(
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


class DeleteGuardError(lance_table.SinkError):
    """delete_missing would delete more of the table than ``sink.max_delete_fraction`` allows."""


def _source_ids(plan: RunPlan, key: str, key_type: pa.DataType):
    """The source's ids, streamed (never all held), as batches of one column named ``key``."""
    c = plan.config
    ids = plan.source.read([c.source.id_column]).select_columns([c.source.id_column])
    for b in ids.iter_batches(batch_format="pyarrow", batch_size=65536):
        yield pa.record_batch([b.column(c.source.id_column).combine_chunks().cast(key_type)], names=[key])


def _missing_share(plan: RunPlan, key: str, key_type: pa.DataType, sample_rows: int = 100_000) -> float:
    """The share of the table's rows whose document id is not in the source.

    Exact up to ``sample_rows`` rows; above, estimated on a uniform random sample of that many rows
    (standard error under 0.002 for the shares a guard cares about). Memory: the sample only; the
    source ids stream past it once.
    """
    ds = open_dataset(plan.table_uri, plan.sink_options)
    n = ds.count_rows()
    if n == 0:
        return 0.0
    sample = ds.to_table(columns=[key]) if n <= sample_rows else ds.sample(sample_rows, columns=[key])
    keys = sample.column(key).combine_chunks()
    found = np.zeros(len(keys), dtype=bool)
    for batch in _source_ids(plan, key, key_type):
        found |= pc.is_in(keys, value_set=batch.column(0)).to_numpy(zero_copy_only=False)
    return float(1.0 - found.mean())


def _delete_missing(plan: RunPlan, summary: RunSummary) -> int:
    """Delete rows whose document id is absent from the source (a full snapshot).

    Never on a partial view of the source: a run that skipped unreadable files
    (``source.on_bad_file=skip``) deletes nothing, since every id of those files would look
    missing; and a run whose source lacks more than ``sink.max_delete_fraction`` of the table's
    rows (a missing prefix, a half-written export) fails before deleting anything. In a chunked
    table the document id is ``doc_id``: all chunks of a removed document go.
    """
    c = plan.config
    if plan.source.skipped:
        summary.delete_missing_skipped = (
            f"{len(plan.source.skipped)} unreadable source files were skipped, "
            "so the source is not a full snapshot; nothing was deleted"
        )
        return 0
    key = "doc_id" if c.embed.long_text == "chunk" else c.source.id_column
    key_type = plan.table_schema.field(key).type
    share = _missing_share(plan, key, key_type)
    if share > c.sink.max_delete_fraction:
        raise DeleteGuardError(
            f"sink.delete_missing would delete {share:.1%} of table {c.sink.table!r}, more than "
            f"sink.max_delete_fraction={c.sink.max_delete_fraction:g}: is the source ({c.source.path}) complete? "
            f"Nothing was deleted (this run's new and changed rows are committed). If the deletion is "
            f"intended, resume with --set run.id={plan.run_id} --set sink.max_delete_fraction=<share>"
        )
    schema = pa.schema([pa.field(key, key_type)])
    reader = pa.RecordBatchReader.from_batches(schema, _source_ids(plan, key, key_type))
    # Lance's merge_insert, not LanceDB's: LanceDB's would embed the table's text column for the
    # id-only rows (the schema names the table's embedding function) and fail on the missing column.
    result = open_dataset(plan.table_uri, plan.sink_options).merge_insert(key).when_not_matched_by_source_delete()
    return int(result.execute(reader)["num_deleted_rows"])
