"""Matryoshka tables without the encoder: a narrower table derived from a wider table's vectors.

A vector at dimension d is :func:`pipelines.embed.postprocess.postprocess` of the wider one at d (cut to
d, normalised again), the function the encode stage applies to pooled vectors; so the derived table
holds what an indexing run at dimension d would have written, to float32 rounding. What depends on
the dimension is redone: the vectors, each row's ``content_hash`` (keyed by
:func:`pipelines.lineage.vector_key`, which covers the dimension) and the lineage's ``dimension`` (and
the schema's embedding-function entry with it). The rest of each row, ``run_id`` included, is the
wide table's: those rows came from its run. The index is not copied; the caller builds one
(:func:`pipelines.vector_index.step.index_step`).
"""

from __future__ import annotations

from typing import Optional

import pyarrow as pa

from connectors import columns as C
from connectors.lance.lineage import Lineage
from connectors.lance.metadata import lineage_in, table_metadata
from connectors.lance.table import LanceTable, SinkError, map_table
from pipelines.config import ConfigError, PipelineConfig
from pipelines.embed.postprocess import postprocess
from pipelines.lineage import vector_key
from pipelines.run.stages.validate import content_hash
from pipelines.vector_index.tuning import INDEX_LINEAGE_KEYS

__all__ = ["BATCH_ROWS", "cannot_derive", "derive_table"]

BATCH_ROWS = 8192  # rows read, re-cut and written at a time: 12 MiB of 384-dim float32 vectors


def cannot_derive(config: PipelineConfig) -> Optional[str]:
    """Why a table derived from a wider one made with ``config`` would not be what a run at its
    dimension writes, or None when it would."""
    if config.embed.vector_dtype != "float32":
        return (
            "embed.vector_dtype=float16: a vector cut from a stored float16 one is rounded twice, "
            "unlike one cut from the pooled float32 vector"
        )
    if config.embed.long_text == "chunk":
        return "embed.long_text=chunk: a chunk's content_hash is of its whole document, which the table does not hold"
    return None


def derive_table(
    config: PipelineConfig,
    source: str,
    *,
    version: Optional[int] = None,
    batch_rows: int = BATCH_ROWS,
    storage_options: Optional[dict] = None,
) -> tuple[Lineage, int]:
    """Write table ``config.sink.table`` of ``config.sink.uri`` (overwritten) from the wider table
    ``source`` there (at ``version``, default its latest): the same rows, each vector re-cut to
    ``config.embed.dimension`` by ``postprocess`` and its ``content_hash`` recomputed, read and
    written ``batch_rows`` at a time. ``config`` is what a run at that dimension would be given.

    Returns the new table's lineage (the source's at the new dimension, without an index, plus
    ``derived_from``: table, version and dimension) and its row count.

    Raises:
        ConfigError: ``config`` is one a derived table cannot reproduce (:func:`cannot_derive`), names
            no dimension or a wider one than the source's, or differs from the source's lineage in
            normalisation, vector type or metric.
    """
    uri, table, dimension = config.sink.uri, config.sink.table, config.embed.dimension
    why = cannot_derive(config)
    if why is not None:
        raise ConfigError(f"table {table!r} cannot be derived from {source!r}: {why}")
    if table == source:
        raise ConfigError(f"table {table!r} cannot be derived from itself")
    wide_table = LanceTable(uri, source, storage_options)
    if version is None:  # pinned: the schema and the rows are of one version
        version = wide_table.version()
    schema = None if version is None else wide_table.schema(version)
    if schema is None:
        raise SinkError(f"no table {source!r} in {uri}")
    stored = lineage_in(schema, f"table {source!r} in {uri}")  # as recorded: absent keys stay absent
    _check_matches(config, source, stored)

    lineage = Lineage.parse(
        {
            **{k: v for k, v in stored.items() if k not in INDEX_LINEAGE_KEYS},
            "dimension": dimension,
            "derived_from": {"table": source, "version": version, "dimension": stored["dimension"]},
        }
    )
    out_schema, recut = _recut(config, schema, lineage)
    rows = map_table(
        uri, source, table, out_schema, recut, version=version, batch_rows=batch_rows, storage_options=storage_options
    )
    return lineage, rows


def _check_matches(config: PipelineConfig, source: str, wide: dict) -> None:
    """``config`` asks for a dimension the wide table (its lineage as stored, ``wide``) has, made the same way."""
    dimension = config.embed.dimension
    if dimension is None or dimension > wide["dimension"]:
        raise ConfigError(
            f"embed.dimension={dimension}: a table derived from {source!r} needs a dimension of at most "
            f"its {wide['dimension']}"
        )
    shared = (
        ("normalize", "embed.normalize", config.embed.normalize),  # what postprocess does
        ("vector_dtype", "embed.vector_dtype", config.embed.vector_dtype),
        ("metric", "index.metric", config.index.metric),
    )
    for key, setting, value in shared:
        if wide.get(key) != value and value != "auto":
            raise ConfigError(f"{setting}={value}: table {source!r} was made with {key}={wide.get(key)}")


def _recut(config: PipelineConfig, schema: pa.Schema, lineage: Lineage):
    """The derived table's schema (``lineage`` in its metadata) and the function that makes one of its
    batches from a batch of the wide table."""
    dimension = config.embed.dimension
    field = schema.field(C.VECTOR)
    vector_type = pa.list_(field.type.value_field, dimension)
    out_schema = schema.set(schema.get_field_index(C.VECTOR), field.with_type(vector_type))
    out_schema = out_schema.with_metadata(table_metadata(lineage))
    key = vector_key(lineage, config)
    text_column, normalize = config.source.text_column, bool(config.embed.normalize)

    def recut(batch: pa.RecordBatch) -> pa.RecordBatch:
        vectors = batch.column(C.VECTOR)
        wide_vectors = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), vectors.type.list_size)
        narrow = postprocess(wide_vectors, dimension, normalize)
        hashes = [None if t is None else content_hash(t, key) for t in batch.column(text_column).to_pylist()]
        columns = {
            C.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(narrow.ravel(), pa.float32()), type=vector_type),
            C.HASH: pa.array(hashes, pa.string()),
        }
        return pa.RecordBatch.from_arrays(
            [columns.get(name, batch.column(name)) for name in out_schema.names], schema=out_schema
        )

    return out_schema, recut
