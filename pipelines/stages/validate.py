"""Validate stage: mark rows that cannot be embedded, with a reason; keep every row.

Rejected rows keep flowing (the encoder skips them) so the sink can store them in the rejects table:
nothing read is ever dropped silently.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import columns as C

__all__ = ["REASONS", "ValidateStage"]

REASONS = {
    "null_id": "id is null",
    "null_text": "text is null",
    "empty_text": "text is empty or only whitespace",
    "not_a_string": "text column is not a string type",
    "non_finite_vector": "the model produced NaN or infinite values",
}


class ValidateStage:
    """Adds ``_reject`` (null or a reason key from :data:`REASONS`) and ``_file``; text becomes string."""

    def __init__(self, id_column: str, text_column: str, path_column: str = "path"):
        self.id_column = id_column
        self.text_column = text_column
        self.path_column = path_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        text = batch.column(self.text_column)
        reason = pa.nulls(n, pa.string())
        if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
            text = text.cast(pa.string())
            blank = pc.equal(pc.utf8_trim_whitespace(text), "")
            reason = pc.if_else(pc.fill_null(blank, False), "empty_text", reason)
            reason = pc.if_else(pc.is_null(text), "null_text", reason)
        else:
            reason = pa.array(["not_a_string"] * n, pa.string())
            text = pa.nulls(n, pa.string())
        reason = pc.if_else(pc.is_null(batch.column(self.id_column)), "null_id", reason)

        out = batch.set_column(batch.schema.get_field_index(self.text_column), self.text_column, text)
        if self.path_column in out.column_names:
            files = out.column(self.path_column)
            out = out.drop_columns([self.path_column])
        else:
            files = pa.nulls(n, pa.string())
        out = out.append_column(C.FILE, files.cast(pa.string()))
        return out.append_column(C.REJECT, reason)
