"""Tokenize stage: prompt + text to token ids on CPU workers, so encoders only run forward passes.

The vLLM backend takes these ids too (as token prompts) rather than tokenizing itself: both
backends then see identical inputs (prompt, truncation, appended EOS), truncations are counted in
the run summary, and tokenizing stays on CPU nodes instead of the GPU nodes' few cores.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import columns as C
from pipelines.config import ModelConfig
from pipelines.hf_encoder import padding_side_for
from pipelines.tokenize import eos_to_append, load_tokenizer, tokenize_texts

__all__ = ["TokenizeStage"]


class TokenizeStage:
    """Adds ``_input_ids`` (list<int32>, empty for rejected rows) and ``_truncated`` (bool)."""

    def __init__(self, model: ModelConfig, text_column: str, max_tokens: int, prompt: str):
        self.model = model
        self.text_column = text_column
        self.max_tokens = max_tokens
        self.prompt = prompt

    def __call__(self, batch: pa.Table) -> pa.Table:
        tokenizer = load_tokenizer(self.model.path, self.model.revision, padding_side_for(self.model))
        eos_id = eos_to_append(tokenizer, self.model.append_eos, self.model.pooling)
        ok = pc.is_null(batch.column(C.REJECT)).to_pylist()
        texts = batch.column(self.text_column).to_pylist()
        rows = [i for i, good in enumerate(ok) if good]
        ids, truncated = tokenize_texts(
            tokenizer, [self.prompt + texts[i] for i in rows], self.max_tokens, eos_id
        )
        all_ids: list[list[int]] = [[] for _ in texts]
        all_truncated = [False] * len(texts)
        for k, i in enumerate(rows):
            all_ids[i] = ids[k]
            all_truncated[i] = truncated[k]
        batch = batch.append_column(C.INPUT_IDS, pa.array(all_ids, pa.list_(pa.int32())))
        return batch.append_column(C.TRUNCATED, pa.array(all_truncated, pa.bool_()))
