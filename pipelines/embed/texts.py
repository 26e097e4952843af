"""Texts to stored vectors in one call: prompt, tokenize (EOS as the run appends it), encode, post-process.

What the indexing run does in its tokenize and encode stages, for a handful of texts in this process:
the query path (:class:`pipelines.search.searcher.Searcher`) and ``embedpipe check-model`` use it, so
a query is embedded exactly as the table's documents were.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from pipelines.embed.postprocess import postprocess
from pipelines.embed.tokenizer import eos_to_append, tokenize_texts

__all__ = ["embed_texts"]


def embed_texts(
    encoder, texts: Sequence[str], prompt: str, max_tokens: Optional[int], dimension: int, normalize: bool = True
) -> np.ndarray:
    """Vectors of ``texts`` with ``prompt`` before each, cut at ``max_tokens`` (None: the tokenizer's
    limit), through ``encoder`` (an :class:`pipelines.embed.hf_encoder.HFEncoder`, which holds its
    model's settled settings and tokenizer), truncated to ``dimension`` and normalised."""
    model, tokenizer = encoder.config, encoder.tokenizer
    eos_id = eos_to_append(tokenizer, model.append_eos, model.pooling)
    limit = max_tokens or tokenizer.model_max_length
    ids, _ = tokenize_texts(tokenizer, [prompt + t for t in texts], limit, eos_id)
    pooled = encoder.embed(ids, None, encoder.prompt_tokens(prompt))
    return postprocess(pooled, dimension, normalize)
