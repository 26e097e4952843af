"""Validate stage: mark rows that cannot be embedded, with a reason; keep every row.

Rejected rows keep flowing (the encoder skips them) so the sink can store them in the rejects table:
nothing read is ever dropped silently. Valid rows get a ``content_hash`` of their text and the
embedding lineage, which incremental runs compare to skip unchanged documents.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from connectors import columns as C

__all__ = ["REASONS", "ValidateStage", "content_hash"]

REASONS = {
    "null_id": "id is null",
    "null_text": "text is null",
    "empty_text": "text is empty or only whitespace",
    "not_a_string": "text column is not a string type in this file",
    "invalid_utf8": "text bytes are not valid UTF-8",
    "non_finite_vector": "the model produced NaN or infinite values",
    "duplicate_id": "another row with this id was already written (sink.duplicate_ids=reject)",
    "superseded": "the run read a later revision of this id (sink.revision_by)",
}


def content_hash(text: str, lineage_key: str) -> str:
    """What decides whether a document must be embedded again: its text and the embedding space.

    blake2b takes keys of at most 64 bytes; the whole ``lineage_key`` is digested to 32 first, so no
    part of a long key is cut off (a cut once left the model and chunking settings out of the hash).
    """
    key = hashlib.blake2b(lineage_key.encode(), digest_size=32).digest()
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).hexdigest()


def _decode_binary(values: pa.Array) -> tuple[pa.Array, list]:
    texts, bad = [], []
    for value in values.to_pylist():
        if value is None:
            texts.append(None)
            bad.append(False)
            continue
        try:
            texts.append(value.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            texts.append(value.decode("utf-8", errors="replace"))  # kept for the rejects table
            bad.append(True)
    return pa.array(texts, pa.string()), bad


def _binary_if_invalid_utf8(text: pa.Array) -> pa.Array:
    """A string column holding bytes that are not UTF-8, as binary (decoded row by row below).

    Parquet readers trust a column's declared ``string`` type and never check its bytes, and most
    compute kernels do not either; the first Python conversion of such a row raises and would
    fail the whole job. One full validation of the batch is cheap; only a batch that fails it
    takes the row-by-row path, which rejects just the bad rows.
    """
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        return text
    try:
        text.validate(full=True)
        return text
    except pa.ArrowInvalid:
        return text.cast(pa.large_binary() if pa.types.is_large_string(text.type) else pa.binary())


class ValidateStage:
    """Adds ``_reject`` (null or a key of :data:`REASONS`), ``_file`` and ``content_hash``."""

    def __init__(self, id_column: str, text_column: str, lineage_key: str = "", path_column: str = "path"):
        self.id_column = id_column
        self.text_column = text_column
        self.lineage_key = lineage_key
        self.path_column = path_column

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        text = batch.column(self.text_column).combine_chunks()
        reason = pa.nulls(n, pa.string())
        text = _binary_if_invalid_utf8(text)
        if pa.types.is_binary(text.type) or pa.types.is_large_binary(text.type):
            text, bad = _decode_binary(text)
            reason = pc.if_else(pa.array(bad, pa.bool_()), "invalid_utf8", reason)
        if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
            text = text.cast(pa.string())
            blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(text), ""), False)
            reason = pc.if_else(blank, "empty_text", reason)
            reason = pc.if_else(pc.is_null(text), "null_text", reason)
        else:
            reason = pa.array(["not_a_string"] * n, pa.string())
            text = pa.nulls(n, pa.string())
        reason = pc.if_else(pc.is_null(batch.column(self.id_column)), "null_id", reason)

        hashes = [
            content_hash(t, self.lineage_key) if r is None else None
            for t, r in zip(text.to_pylist(), reason.to_pylist())
        ]
        out = batch.set_column(batch.schema.get_field_index(self.text_column), self.text_column, text)
        if self.path_column in out.column_names:
            files = out.column(self.path_column)
            out = out.drop_columns([self.path_column])
        else:
            files = pa.nulls(n, pa.string())
        out = out.append_column(C.FILE, files.cast(pa.string()))
        out = out.append_column(C.HASH, pa.array(hashes, pa.string()))
        return out.append_column(C.REJECT, reason)
