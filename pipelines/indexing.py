"""The bulk indexing run: source -> embedding stages -> Lance fragments -> commit -> index.

Everything that can be checked before the cluster does work is checked in :func:`preflight`:
the config, the source files and their columns, the model and its dimension, and the sink mode.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa

from connectors import lance_sink
from connectors.lance_index import build_index, derive_index_params
from connectors.model_store import model_fingerprint, resolve_model_dir
from connectors.parquet_source import ParquetSource, open_source
from pipelines.config import ConfigError, PipelineConfig
from pipelines.hf_encoder import padding_side_for
from pipelines.lineage import check_compatible, make_lineage
from pipelines.plan import Stage, apply_stages, embedding_stages
from pipelines.summary import RunSummary
from pipelines.tokenize import effective_max_tokens, eos_to_append, load_tokenizer

__all__ = ["RunPlan", "preflight", "run_index"]

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    config: PipelineConfig
    source: ParquetSource
    lineage: dict
    max_tokens: int
    dimension: int
    table_schema: pa.Schema
    read_version: Optional[int]  # the table version an append builds on


def _table_schema(config: PipelineConfig, source: ParquetSource, dimension: int, lineage: dict) -> pa.Schema:
    src = config.source
    value = pa.float16() if config.embed.vector_dtype == "float16" else pa.float32()
    fields = [
        source.schema.field(src.id_column),
        pa.field(src.text_column, pa.string()),
        *(source.schema.field(c) for c in src.metadata_columns),
        pa.field("vector", pa.list_(value, dimension)),
    ]
    return pa.schema(fields, metadata={lance_sink.LINEAGE_KEY: json.dumps(lineage, sort_keys=True)})


def preflight(config: PipelineConfig) -> RunPlan:
    """Check the run can work, before any embedding starts; raises with a message naming the problem."""
    src, sink = config.source, config.sink
    columns = [src.id_column, src.text_column, *src.metadata_columns]
    source = open_source(src.path, columns)

    model_dir = resolve_model_dir(config.model.path, config.model.revision)
    tokenizer = load_tokenizer(config.model.path, config.model.revision, padding_side_for(config.model))
    from transformers import AutoConfig

    hidden = int(AutoConfig.from_pretrained(str(model_dir)).hidden_size)
    dimension = config.embed.dimension or hidden
    if dimension > hidden:
        raise ConfigError(f"embed.dimension={dimension} is larger than the model's {hidden} dimensions")
    max_tokens = effective_max_tokens(model_dir, tokenizer, config.model.max_tokens)
    lineage = make_lineage(
        config, fingerprint=model_fingerprint(model_dir), hidden_size=hidden,
        max_tokens=max_tokens, dimension=dimension,
        append_eos=eos_to_append(tokenizer, config.model.append_eos, config.model.pooling) is not None,
    )

    read_version = None
    existing = lance_sink.read_lineage(sink.uri, sink.table) if sink.mode != "overwrite" else None
    if sink.mode == "create" and lance_sink.table_version(sink.uri, sink.table) is not None:
        raise lance_sink.SinkError(f"sink.table={sink.table} already exists in {sink.uri} "
                                   "(sink.mode=create); use sink.mode=overwrite or append")
    if sink.mode == "append" and existing is not None:
        check_compatible(existing, lineage, "this run's config")
        read_version = lance_sink.table_version(sink.uri, sink.table)
    schema = _table_schema(config, source, dimension, lineage)
    return RunPlan(config, source, lineage, max_tokens, dimension, schema, read_version)


def sink_stage(plan: RunPlan) -> Stage:
    c = plan.config
    writer = lance_sink.FragmentWriter(
        table_uri=lance_sink.dataset_uri(c.sink.uri, c.sink.table),
        rejects_uri=lance_sink.dataset_uri(c.sink.uri, c.sink.table + "_rejects"),
        schema=plan.table_schema,
        id_column=c.source.id_column,
        text_column=c.source.text_column,
    )
    return Stage("sink", writer, map_kwargs=dict(batch_size=c.sink.rows_per_fragment))


def run_index(config: PipelineConfig) -> RunSummary:
    """Index ``config.source`` into ``config.sink`` and build the vector index; returns the summary."""
    import ray

    started = time.perf_counter()
    plan = preflight(config)
    if not ray.is_initialized():
        ray.init()
    import lancedb  # after ray.init(): importing it first makes Ray warn about forking

    c = config
    summary = RunSummary(table_uri=c.sink.uri, table=c.sink.table, rejects_table=c.sink.table + "_rejects")
    columns = [c.source.id_column, c.source.text_column, *c.source.metadata_columns]
    dataset = plan.source.read(columns)
    stages = embedding_stages(config, max_tokens=plan.max_tokens, dimension=plan.dimension) + [sink_stage(plan)]
    stats = apply_stages(dataset, stages)

    fragments, reject_fragments = [], []
    embed_started = time.perf_counter()
    # Only per-batch counts and fragment descriptions reach the driver, never rows or vectors.
    for batch in stats.iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            summary.add_batch(row["rows"], row["written"], json.loads(row["rejected"]), row["tokens"], row["truncated"])
            fragments.extend(pickle.loads(row["fragments"]))
            reject_fragments.extend(pickle.loads(row["reject_fragments"]))
    summary.embed_seconds = time.perf_counter() - embed_started

    table_uri = lance_sink.dataset_uri(c.sink.uri, c.sink.table)
    summary.version = lance_sink.commit_fragments(
        table_uri, plan.table_schema, fragments, c.sink.mode, read_version=plan.read_version
    )
    rejects_uri = lance_sink.dataset_uri(c.sink.uri, summary.rejects_table)
    rejects_version = lance_sink.table_version(c.sink.uri, summary.rejects_table)
    lance_sink.commit_fragments(
        rejects_uri, lance_sink.REJECT_SCHEMA, reject_fragments,
        "append" if c.sink.mode == "append" and rejects_version is not None else "overwrite",
        read_version=rejects_version if c.sink.mode == "append" else None,
    )

    table = lancedb.connect(c.sink.uri).open_table(c.sink.table)
    summary.table_rows = table.count_rows()
    params = derive_index_params(summary.table_rows, plan.dimension, c.index)
    summary.index = build_index(table, params).to_dict()

    lineage = dict(plan.lineage)
    lineage["index"] = summary.index
    lineage["query_defaults"] = {"nprobes": params.nprobes, "refine_factor": params.refine_factor}
    lineage["counts"] = {
        "read": summary.rows_read, "written": summary.rows_written,
        "rejected": dict(summary.rejected), "truncated": summary.truncated, "table_rows": summary.table_rows,
    }
    lance_sink.write_lineage(c.sink.uri, c.sink.table, lineage)
    summary.version = lance_sink.table_version(c.sink.uri, c.sink.table)
    summary.seconds = time.perf_counter() - started
    return summary
