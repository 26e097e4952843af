"""``sink.delete_missing``: delete the rows whose document id is absent from the source (a full snapshot),
guarded against a partial view of the source.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors import lance_sink
from connectors.lance_table import open_dataset
from pipelines.run.preflight import RunPlan

__all__ = ["DeleteGuardError", "delete_missing"]


class DeleteGuardError(lance_sink.SinkError):
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


def delete_missing(plan: RunPlan) -> tuple[int, str]:
    """Delete rows whose document id is absent from the source (a full snapshot); returns the rows
    deleted and, when it deleted nothing on purpose, why.

    Never on a partial view of the source: a run that skipped unreadable files
    (``source.on_bad_file=skip``) deletes nothing, since every id of those files would look
    missing; and a run whose source lacks more than ``sink.max_delete_fraction`` of the table's
    rows (a missing prefix, a half-written export) fails before deleting anything. In a chunked
    table the document id is ``doc_id``: all chunks of a removed document go.
    """
    c = plan.config
    if plan.source.skipped:
        return 0, (
            f"{len(plan.source.skipped)} unreadable source files were skipped, "
            "so the source is not a full snapshot; nothing was deleted"
        )
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
    return int(result.execute(reader)["num_deleted_rows"]), ""
