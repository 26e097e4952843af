"""Preflight: every check a run makes before the cluster does work, and the plan and table schema they give.

First what does not depend on the table (:func:`check_inputs`): the config, the source files and
their columns, the model and its dimension (for ``s3://``, that buckets exist and the credentials are
accepted); then, once the run holds the table's lease, what depends on the table: exists, lineage,
dtype, schema, the run log (:func:`plan_on_table`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyarrow as pa

from connectors import columns as C
from connectors.lance.metadata import table_metadata
from connectors.lance.table import LanceTable, SinkError
from connectors.model_store import model_fingerprint, resolve_model_dir
from connectors.parquet_source import ParquetSource, open_source
from connectors.storage import Storage, is_s3
from pipelines.config import ConfigError, PipelineConfig
from pipelines.embed.precision import planned_device, resolve_dtype
from pipelines.lineage import Lineage, check_compatible, make_lineage
from pipelines.run.model_plan import ModelPlan, plan_model
from pipelines.vector_index.step import check_tuning_queries

__all__ = ["Inputs", "RunPlan", "check_inputs", "plan_on_table", "preflight"]


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
    model: Optional[ModelPlan] = None  # the model's settled settings, where each came from, its dimensions

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

    config: PipelineConfig  # the model's auto settings settled from its own files
    source: ParquetSource
    storage: Storage
    fingerprint: str
    model: ModelPlan
    requested: PipelineConfig  # as given: an append settles its auto settings again from the table's lineage
    model_dir: Path


def check_inputs(config: PipelineConfig) -> Inputs:
    """The checks that do not depend on the table: config, source files and columns, the model (its
    modules, settings and dimension), the tokens of a chunk (and, for ``s3://``, that buckets exist and
    credentials work). Raises with a message naming the problem."""
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
    model = plan_model(config, model_dir, storage)
    return Inputs(model.config, source, storage, model_fingerprint(model_dir), model, config, model_dir)


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
    model = inputs.model
    if existing is not None and existing.model is not None:  # auto settings follow the table's vectors
        model = plan_model(inputs.requested, inputs.model_dir, storage, existing.model, sink.table, existing.metric)
        config = model.config
    config, dtype_reason = _with_dtype(config, existing)
    lineage = make_lineage(
        config,
        fingerprint=inputs.fingerprint,
        hidden_size=model.output_dimension,
        max_tokens=model.max_tokens,
        dimension=model.dimension,
        append_eos=model.append_eos,
        modules=model.resolved.modules,
        matryoshka_dimensions=model.matryoshka_dimensions,
    )

    run_id = _pick_run_id(config, table, new_run_id)
    resuming = table.runs.started(run_id)
    _check_sink_mode_fits(config, table, run_id, resuming, version)
    if adding or (version is not None and resuming):
        existing = existing or table.lineage()
        check_compatible(existing, lineage, "this run's config")
    schema = _table_schema(config, source, model.dimension, lineage)
    return RunPlan(
        config,
        run_id,
        resuming,
        source,
        lineage,
        model.max_tokens,
        model.dimension,
        schema,
        version,
        storage,
        dtype_reason,
        table=table,
        model=model,
    )


def _pick_run_id(config: PipelineConfig, table: LanceTable, new_run_id: Optional[str]) -> str:
    """This run's id: the config's, the table's unfinished run (``run.resume``), else ``new_run_id`` or a new one."""
    sink = config.sink
    runlog = table.runs
    run_id = config.run.id
    if config.run.resume:
        run_id = runlog.last_unfinished()
        if run_id is None:
            raise ConfigError(
                f"run.resume=true: table {sink.table!r} in {sink.uri} has no unfinished run "
                "(every run in its log finished)"
            )
    return run_id or new_run_id or uuid.uuid4().hex[:12]


def _check_sink_mode_fits(
    config: PipelineConfig, table: LanceTable, run_id: str, resuming: bool, version: Optional[int]
) -> None:
    """A resumed run keeps the sink.mode it started with; ``create`` never writes over an existing table."""
    sink = config.sink
    runlog = table.runs
    if resuming and runlog.mode(run_id) not in (None, sink.mode):
        raise ConfigError(
            f"run {run_id} was started with sink.mode={runlog.mode(run_id)}; resume it with "
            f"the same mode (this config has sink.mode={sink.mode})"
        )
    if sink.mode == "create" and version is not None and not resuming:
        raise SinkError(
            f"sink.table={sink.table} already exists in {sink.uri} "
            "(sink.mode=create); use sink.mode=overwrite, append or upsert"
        )


def preflight(config: PipelineConfig) -> RunPlan:
    """Check the run can work, before any embedding starts; raises with a message naming the problem.
    (A job checks the inputs first, then the table once it holds the lease: :func:`pipelines.run.runner.run_index`.)"""
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
