"""The bulk indexing run: source -> embedding stages -> Lance fragments -> checkpoints -> index.

Everything that can be checked before the cluster does work is checked in :func:`preflight`:
the config, the source files and their columns, the model and its dimension, and the sink mode
(and, for ``s3://``, that buckets exist and the credentials are accepted).

Exactly once, across failures:
- a dead encoder actor or writer task: Ray Data retries the block; only fragments of blocks whose
  output reached the driver are ever committed, so a retried block is never counted twice.
- a dead driver: every ``sink.checkpoint_rows`` rows the driver commits the fragments it holds and
  records the input files that are now complete in ``<table>_runs``. Started again with the same
  ``run.id``, the run deletes what it had committed from unfinished files and redoes only those.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from connectors import lance_sink
from connectors.model_store import model_fingerprint, resolve_model_dir
from connectors.parquet_source import ParquetSource, open_source
from connectors.storage import Storage, is_s3
from pipelines import columns as C
from pipelines.config import ConfigError, PipelineConfig
from pipelines.hf_encoder import padding_side_for
from pipelines.lineage import check_compatible, make_lineage, vector_key
from pipelines.plan import Stage, apply_stages, embedding_stages
from pipelines.summary import RunSummary
from pipelines.tokenize import chunk_window, effective_max_tokens, eos_to_append, load_tokenizer
from pipelines.index_step import check_tuning_queries, index_table, read_tuning_queries
from pipelines.tuning import index_lineage

__all__ = ["RunPlan", "preflight", "run_index"]

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    config: PipelineConfig
    run_id: str
    resuming: bool  # this run id committed before: continue, never overwrite again
    source: ParquetSource
    lineage: dict
    max_tokens: int
    dimension: int
    table_schema: pa.Schema
    start_version: Optional[int]  # the table's version when the run began (None: no table)
    storage: Optional[Storage] = None  # endpoint/credentials for s3:// paths, resolved once here

    @property
    def sink_options(self) -> Optional[dict]:
        """Lance ``storage_options`` for the sink (None for a local one)."""
        return self.storage.lance_options(self.config.sink.uri) if self.storage else None

    @property
    def table_uri(self) -> str:
        return lance_sink.dataset_uri(self.config.sink.uri, self.config.sink.table)

    @property
    def rejects_uri(self) -> str:
        return lance_sink.dataset_uri(self.config.sink.uri, lance_sink.rejects_table(self.config.sink.table))


def _table_schema(config: PipelineConfig, source: ParquetSource, dimension: int, lineage: dict) -> pa.Schema:
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
    return pa.schema(fields, metadata={lance_sink.LINEAGE_KEY: json.dumps(lineage, sort_keys=True)})


def preflight(config: PipelineConfig) -> RunPlan:
    """Check the run can work, before any embedding starts; raises with a message naming the problem."""
    src, sink = config.source, config.sink
    columns = [src.id_column, src.text_column, *src.metadata_columns]
    storage = Storage.resolve(config.storage, paths=[src.path, sink.uri, config.model.path,
                                                     config.index.tuning_queries_path])
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
    if config.embed.long_text == "chunk":  # before any row is committed, not in the first tokenize task
        eos_id = eos_to_append(tokenizer, config.model.append_eos, config.model.pooling)
        chunk_window(tokenizer, max_tokens, config.model.document_prompt, eos_id, config.embed.chunk_overlap)
    lineage = make_lineage(
        config, fingerprint=model_fingerprint(model_dir), hidden_size=hidden,
        max_tokens=max_tokens, dimension=dimension,
        append_eos=eos_to_append(tokenizer, config.model.append_eos, config.model.pooling) is not None,
    )

    run_id = config.run.id or uuid.uuid4().hex[:12]
    options = storage.lance_options(sink.uri)
    resuming = config.run.id is not None and lance_sink.RunLog(sink.uri, sink.table, options).started(run_id)
    version = lance_sink.table_version(sink.uri, sink.table, options)
    if sink.mode == "create" and version is not None and not resuming:
        raise lance_sink.SinkError(f"sink.table={sink.table} already exists in {sink.uri} "
                                   "(sink.mode=create); use sink.mode=overwrite, append or upsert")
    if version is not None and (sink.mode in ("append", "upsert") or resuming):
        existing = lance_sink.read_lineage(sink.uri, sink.table, options)
        check_compatible(existing, lineage, "this run's config")
    schema = _table_schema(config, source, dimension, lineage)
    return RunPlan(config, run_id, resuming, source, lineage, max_tokens, dimension, schema, version, storage)


class _Checkpointer:
    """Holds written-but-uncommitted fragments; commits them and records the files they complete."""

    def __init__(self, plan: RunPlan, summary: RunSummary, done: dict[str, int]):
        c = plan.config
        self.plan, self.summary = plan, summary
        self.options = plan.sink_options
        self.runlog = lance_sink.RunLog(c.sink.uri, c.sink.table, self.options)
        self.overwrite_first = c.sink.mode in ("create", "overwrite") and not plan.resuming
        self.fragments: list = []
        self.reject_fragments: list = []
        self.replaced: list[np.ndarray] = []
        self.seen: Counter = Counter()
        self.recorded = set(done)
        self.rows_since = 0

    def add(self, row: dict) -> None:
        self.summary.add_batch(row["rows"], row["written"], json.loads(row["rejected"]), row["tokens"],
                               row["truncated"], row["skipped"])
        self.fragments.extend(pickle.loads(row["fragments"]))
        self.reject_fragments.extend(pickle.loads(row["reject_fragments"]))
        self.replaced.append(np.frombuffer(row["replaced_rowids"], dtype=np.uint64))
        self.seen.update(json.loads(row["files"]))
        self.rows_since += row["rows"]
        if self.rows_since >= self.plan.config.sink.checkpoint_rows:
            self.commit()

    def commit(self) -> None:
        """One checkpoint: rows, then superseded rows deleted, then the finished files recorded.

        Each step is safe to lose: the files are recorded last, so a crash anywhere before leaves
        them unfinished and a resumed run redoes them after deleting this run's rows from them.
        """
        if self.fragments or self.overwrite_first:
            lance_sink.commit_fragments(self.plan.table_uri, self.plan.table_schema, self.fragments, self.overwrite_first,
                                        self.options)
        if self.reject_fragments or self.overwrite_first:
            lance_sink.commit_fragments(self.plan.rejects_uri, lance_sink.REJECT_SCHEMA, self.reject_fragments,
                                        self.overwrite_first, self.options)
        replaced = np.concatenate(self.replaced) if self.replaced else np.zeros(0, np.uint64)
        if len(replaced):
            lance_sink.delete_rows(self.plan.table_uri, replaced, self.options)
        if self.overwrite_first:
            self.runlog.mark_started(self.plan.run_id)
            self.overwrite_first = False
        finished = {f: n for f, n in self.seen.items()
                    if n >= self.plan.source.rows.get(f, 0) and f not in self.recorded}
        self.runlog.record(self.plan.run_id, finished)
        self.recorded.update(finished)
        self.summary.checkpoints += 1
        self.fragments, self.reject_fragments, self.replaced, self.rows_since = [], [], [], 0


def run_index(config: PipelineConfig) -> RunSummary:
    """Index ``config.source`` into ``config.sink`` and build the vector index; returns the summary."""
    import ray

    started = time.perf_counter()
    plan = preflight(config)
    if not ray.is_initialized():
        ray.init()
    # Blocks are bounded in bytes (Ray's default is 128 MiB): a file's rows and the encoder's vectors
    # then stream through in pieces of this size instead of one block per file.
    ray.data.DataContext.get_current().target_max_block_size = config.compute.max_block_mb * 2**20
    import lancedb  # after ray.init(): importing it first makes Ray warn about forking

    c = config
    summary = RunSummary(table_uri=c.sink.uri, table=c.sink.table, rejects_table=lance_sink.rejects_table(c.sink.table),
                         run_id=plan.run_id, skipped_files=dict(plan.source.skipped))
    options = plan.sink_options
    runlog = lance_sink.RunLog(c.sink.uri, c.sink.table, options)
    done = runlog.done_files(plan.run_id)
    todo = [f for f in plan.source.files if f not in done]
    summary.resumed_files = len(plan.source.files) - len(todo)
    if c.sink.mode in ("append", "upsert"):
        # Before anything is committed: a crash from here on leaves rows a resumed run must find.
        # (create/overwrite mark the run after their first commit: before it, a retry overwrites.)
        runlog.mark_started(plan.run_id)
    if plan.resuming:
        # Whatever an earlier attempt of this run committed from files it did not finish.
        lance_sink.delete_run_leftovers(plan.table_uri, plan.run_id, todo, C.SOURCE_FILE, options)
        lance_sink.delete_run_leftovers(plan.rejects_uri, plan.run_id, todo, "file", options)

    checkpointer = _Checkpointer(plan, summary, done)
    embed_started = time.perf_counter()
    if todo:
        existing = None
        version = lance_sink.table_version(c.sink.uri, c.sink.table, options)
        if c.sink.mode == "upsert" and version is not None:
            existing = lance_sink.ExistingRows(plan.table_uri, version, c.source.id_column, options)
        lineage_key = vector_key(plan.lineage, c)
        stages = embedding_stages(config, max_tokens=plan.max_tokens, dimension=plan.dimension,
                                  lineage_key=lineage_key, existing=existing, storage=plan.storage)
        stages.append(_sink_stage(plan))
        columns = [c.source.id_column, c.source.text_column, *c.source.metadata_columns]
        stats = apply_stages(plan.source.read(columns, todo), stages)
        # Only per-batch counts and fragment descriptions reach the driver, never rows or vectors.
        for batch in stats.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                checkpointer.add(row)
    checkpointer.commit()
    summary.embed_seconds = time.perf_counter() - embed_started

    db = lancedb.connect(c.sink.uri, storage_options=options)
    table = db.open_table(c.sink.table)
    if c.sink.duplicate_ids == "reject":
        dups = lance_sink.drop_duplicate_ids(plan.table_uri, plan.rejects_uri,
                                             c.source.id_column, c.source.text_column, plan.run_id, options)
        summary.rows_written -= dups
        if dups:
            summary.rejected["duplicate_id"] += dups
    if c.sink.delete_missing:
        summary.deleted_missing = _delete_missing(table, plan)
    summary.table_rows = table.count_rows()
    # Off the driver: index training and the tuning's exact searches grow with the table.
    queries = None
    if c.index.tuning_queries_path and c.index.target_recall is not None:
        queries = read_tuning_queries(c.index.tuning_queries_path, c.index.tuning_queries, plan.storage)
    task = ray.remote(num_cpus=1, max_retries=0)(index_table)
    try:
        params, tuning = ray.get(task.remote(
            c.sink.uri, c.sink.table, c.index, id_column=c.source.id_column, dimension=plan.dimension,
            incremental=c.sink.mode in ("append", "upsert") or plan.resuming, lineage=plan.lineage,
            storage=plan.storage, query_texts=queries,
        ))
    except ray.exceptions.RayTaskError as exc:  # the task's own error, not Ray's wrapper and traceback
        raise exc.cause if isinstance(exc.cause, Exception) else exc
    summary.index = params.to_dict()
    summary.tuning = tuning.to_dict() if tuning else {}

    lineage = dict(plan.lineage)
    lineage.update(index_lineage(params, tuning))
    lineage["counts"] = {
        "read": summary.rows_read, "written": summary.rows_written, "skipped_unchanged": summary.skipped,
        "rejected": dict(summary.rejected), "truncated": summary.truncated, "table_rows": summary.table_rows,
        "run_id": plan.run_id,
    }
    lance_sink.write_lineage(c.sink.uri, c.sink.table, lineage, options)
    summary.version = lance_sink.table_version(c.sink.uri, c.sink.table, options)
    summary.seconds = time.perf_counter() - started
    return summary


def _sink_stage(plan: RunPlan) -> Stage:
    c = plan.config
    writer = lance_sink.FragmentWriter(
        table_uri=plan.table_uri,
        rejects_uri=plan.rejects_uri,
        schema=plan.table_schema,
        id_column=c.source.id_column,
        text_column=c.source.text_column,
        run_id=plan.run_id,
        storage_options=plan.sink_options,
    )
    return Stage("sink", writer, map_kwargs=dict(batch_size=c.sink.rows_per_fragment))


def _delete_missing(table, plan: RunPlan) -> int:
    """Delete rows whose id is absent from the source (a full snapshot); ids stream, never all held."""
    c = plan.config
    ids = plan.source.read([c.source.id_column]).select_columns([c.source.id_column])
    id_type = plan.table_schema.field(c.source.id_column).type
    schema = pa.schema([pa.field(c.source.id_column, id_type)])
    batches = (b.select([c.source.id_column]).cast(schema).to_batches()
               for b in ids.iter_batches(batch_format="pyarrow", batch_size=65536))
    reader = pa.RecordBatchReader.from_batches(schema, (rb for group in batches for rb in group))
    key = c.source.id_column if c.embed.long_text != "chunk" else "doc_id"
    if key != c.source.id_column:
        reader = pa.RecordBatchReader.from_batches(
            pa.schema([pa.field("doc_id", id_type)]),
            (pa.record_batch([rb.column(0)], names=["doc_id"]) for rb in reader))
    result = table.merge_insert(key).when_not_matched_by_source_delete().execute(reader)
    return int(result.num_deleted_rows)
