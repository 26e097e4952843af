"""Tokenize stage: prompt + text to token ids on CPU workers, so encoders only run forward passes.

With ``embed.long_text=chunk`` a document over the token limit becomes several rows, one per token
window: ``id`` = ``"<doc_id>#<chunk>"``, plus ``doc_id`` and ``chunk`` columns, and ``text`` is the
window's span of the original text.

The vLLM backend takes these ids too (as token prompts) rather than tokenizing itself: both
backends then see identical inputs (prompt, truncation, appended EOS), truncations are counted in
the run summary, and tokenizing stays on CPU nodes instead of the GPU nodes' few cores.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from connectors import columns as C
from pipelines.config import ModelConfig
from pipelines.embed.hf_encoder import padding_side_for
from pipelines.embed.model_settings import unsettled
from pipelines.embed.tokenizer import chunk_texts, chunk_window, eos_to_append, load_tokenizer, tokenize_texts

__all__ = ["TokenizeStage"]


class TokenizeStage:
    """Adds ``_input_ids`` (list<int32>, empty for rejected rows) and ``_truncated`` (bool); when chunking,
    also ``_chunks`` (the number of rows the row's document became)."""

    def __init__(
        self,
        model: ModelConfig,
        id_column: str,
        text_column: str,
        max_tokens: int,
        prompt: str,
        chunk: bool = False,
        overlap: int = 0,
        storage=None,
    ):
        if unsettled(model):  # "auto" would become a prompt: the run's preflight settles them (run/model_plan.py)
            raise ValueError(f"TokenizeStage needs settled model settings; {unsettled(model)} are 'auto'")
        self.model = model
        self.storage = storage  # where an s3:// model comes from (connectors.storage.Storage)
        self.id_column = id_column
        self.text_column = text_column
        self.max_tokens = max_tokens
        self.prompt = prompt
        self.chunk = chunk
        self.overlap = overlap

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokenizer = load_tokenizer(self.model.path, self.model.revision, padding_side_for(self.model), self.storage)
        eos_id = eos_to_append(tokenizer, self.model.append_eos, self.model.pooling)
        ok = pc.is_null(batch.column(C.REJECT)).to_pylist()
        texts = batch.column(self.text_column).to_pylist()
        rows = [i for i, good in enumerate(ok) if good]
        if self.chunk:
            return self._chunked(batch, tokenizer, texts, rows, eos_id)
        ids, truncated = tokenize_texts(tokenizer, [self.prompt + texts[i] for i in rows], self.max_tokens, eos_id)
        all_ids: list[list[int]] = [[] for _ in texts]
        all_truncated = [False] * len(texts)
        for k, i in enumerate(rows):
            all_ids[i] = ids[k]
            all_truncated[i] = truncated[k]
        batch = batch.append_column(C.INPUT_IDS, pa.array(all_ids, pa.list_(pa.int32())))
        return batch.append_column(C.TRUNCATED, pa.array(all_truncated, pa.bool_()))

    def _chunked(self, batch: pa.Table, tokenizer, texts: list, rows: list[int], eos_id=None) -> pa.Table:
        # Chunk the bare text (spans must index the original), then prefix each window with the
        # prompt's tokens inside the same budget.
        prompt_ids = tokenizer(self.prompt, add_special_tokens=False)["input_ids"] if self.prompt else []
        budget = chunk_window(tokenizer, self.max_tokens, self.prompt, eos_id, self.overlap)
        windows = chunk_texts(tokenizer, [texts[i] for i in rows], budget, self.overlap)
        take, ids, chunk_no, spans = [], [], [], []
        counter: dict[int, int] = {}
        for sample, window, start, end in windows:
            row = rows[sample]
            k = counter.get(row, 0)
            counter[row] = k + 1
            if prompt_ids:  # after the leading special token, if any
                head = 1 if window and window[0] in tokenizer.all_special_ids else 0
                window = window[:head] + prompt_ids + window[head:]
            if eos_id is not None:
                window = window + [eos_id]
            take.append(row)
            ids.append(window)
            chunk_no.append(k)
            spans.append(texts[row][start:end])
        rejected = [i for i in range(batch.num_rows) if i not in counter]  # pass through unchanged
        order = take + rejected
        out = batch.take(pa.array(order, pa.int64()))
        doc_ids = out.column(self.id_column)
        new_ids = [
            f"{d}#{k}" if k is not None else (str(d) if d is not None else None)
            for d, k in zip(doc_ids.to_pylist(), chunk_no + [None] * len(rejected))
        ]
        out = out.set_column(out.schema.get_field_index(self.id_column), self.id_column, pa.array(new_ids, pa.string()))
        text_col = spans + [texts[i] for i in rejected]
        out = out.set_column(
            out.schema.get_field_index(self.text_column), self.text_column, pa.array(text_col, pa.string())
        )
        out = out.append_column("doc_id", doc_ids)
        out = out.append_column("chunk", pa.array(chunk_no + [None] * len(rejected), pa.int32()))
        out = out.append_column(C.INPUT_IDS, pa.array(ids + [[]] * len(rejected), pa.list_(pa.int32())))
        # The document's row count travels with each row: later stages cut blocks anywhere, so a
        # document's windows can reach the sink in different batches (pipelines/run/checkpoints.py).
        out = out.append_column(C.CHUNKS, pa.array([counter.get(i, 1) for i in order], pa.int32()))
        return out.append_column(C.TRUNCATED, pa.array([False] * out.num_rows, pa.bool_()))
