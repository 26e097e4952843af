"""Pooling: token embeddings of shape (batch, seq, hidden) to one vector per text.

Each function takes the attention mask the tokenizer produced (1 for real tokens, 0 for padding) and
works for left and right padding alike.
"""

from __future__ import annotations

import torch

__all__ = ["POOLING_MODES", "cls_pool", "last_token_pool", "mean_pool", "pool"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings over real tokens (sentence-transformers' ``mean``)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Embedding of the first real token (``[CLS]`` for BERT-style models, right padded)."""
    first = mask.argmax(dim=1)  # index of the first 1 in each row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Embedding of the last real token: what decoder embedders (E5-Mistral, Qwen3) are trained on."""
    seq_len = mask.shape[1]
    last = seq_len - 1 - mask.flip(dims=[1]).argmax(dim=1)  # index of the last 1 in each row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLING_MODES = {"mean": mean_pool, "cls": cls_pool, "last": last_token_pool}


def pool(mode: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    try:
        fn = POOLING_MODES[mode]
    except KeyError:
        raise ValueError(f"pooling {mode!r} is not one of {sorted(POOLING_MODES)}") from None
    return fn(hidden, mask)
