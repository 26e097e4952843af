"""Pooling: token embeddings of shape (batch, seq, hidden) to one vector per text.

Every pooling mode sentence-transformers has, computed as its ``Pooling`` module computes it (the
conformance suite, tests/integration/test_model_conformance.py, holds them to it): ``mean``, ``cls``,
``last`` (its ``lasttoken``), ``max``, ``mean_sqrt_len_tokens``, ``weightedmean``, and several joined by
``+`` (concatenated, in the order given). Each function takes the attention mask the tokenizer produced
(1 for real tokens, 0 for padding) and works for left and right padding alike. ``prompt_tokens``
(a model whose Pooling has ``include_prompt: false``) leaves the prompt's tokens out of the pool; the
weighted mean keeps the remaining tokens' original position weights, as sentence-transformers does.
"""

from __future__ import annotations

import torch

__all__ = ["POOLING_MODES", "cls_pool", "last_token_pool", "mean_pool", "pool", "pooling_modes"]


def _accumulation(hidden: torch.Tensor) -> torch.dtype:
    """Sums of half-precision embeddings are taken in float32 (as sentence-transformers does)."""
    return torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings over real tokens (sentence-transformers' ``mean``)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1, dtype=_accumulation(hidden))
    counts = mask.sum(dim=1, keepdim=True).to(summed.dtype).clamp(min=1e-9)
    return (summed / counts).to(hidden.dtype)


def mean_sqrt_len_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over real tokens divided by the square root of their number (``mean_sqrt_len_tokens``)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1, dtype=_accumulation(hidden))
    counts = mask.sum(dim=1, keepdim=True).to(summed.dtype).clamp(min=1e-9)
    return (summed / counts.sqrt()).to(hidden.dtype)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Embedding of the first real token (``[CLS]`` for BERT-style models, right padded)."""
    first = mask.to(torch.int).argmax(dim=1)  # index of the first 1 in each row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Embedding of the last real token: what decoder embedders (E5-Mistral, Qwen3) are trained on."""
    seq_len = mask.shape[1]
    last = seq_len - 1 - mask.to(torch.int).flip(dims=[1]).argmax(dim=1)  # index of the last 1 in each row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-dimension maximum over real tokens (``max``)."""
    return hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values


def weighted_mean_pool(hidden: torch.Tensor, mask: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
    """Mean weighted by position, 1 for the first real token (``weightedmean``; ``padded`` is the mask
    before the prompt was left out, which fixes where positions start)."""
    acc = _accumulation(hidden)
    positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=acc).view(1, -1, 1)
    positions = positions - padded.to(torch.int32).argmax(dim=1).view(-1, 1, 1)  # left padding shifts the start
    weights = mask.unsqueeze(-1).to(acc) * positions
    summed = (hidden * weights).sum(dim=1)
    return (summed / weights.sum(dim=1).clamp(min=1e-9)).to(hidden.dtype)


POOLING_MODES = {
    "mean": mean_pool,
    "cls": cls_pool,
    "last": last_token_pool,
    "max": max_pool,
    "mean_sqrt_len_tokens": mean_sqrt_len_pool,
    "weightedmean": weighted_mean_pool,
}


def pooling_modes(mode: str) -> list[str]:
    """The modes in ``mode`` ("cls+mean" -> ["cls", "mean"]); ValueError naming an unknown one."""
    modes = mode.split("+")
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown or not mode:
        raise ValueError(f"pooling {mode!r} is not one of {sorted(POOLING_MODES)} (or several joined by '+')")
    return modes


def _without_prompt(mask: torch.Tensor, prompt_tokens: int) -> torch.Tensor:
    """``mask`` with each row's first ``prompt_tokens`` real tokens zeroed (left padding included)."""
    first = mask.to(torch.int32).argmax(dim=1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return mask.masked_fill(positions < first + prompt_tokens, 0)


def pool(mode: str, hidden: torch.Tensor, mask: torch.Tensor, prompt_tokens: int = 0) -> torch.Tensor:
    """One vector per row of ``hidden``: ``mode``'s pools, concatenated when several."""
    padded = mask
    if prompt_tokens:
        mask = _without_prompt(mask, prompt_tokens)
    out = []
    for name in pooling_modes(mode):
        fn = POOLING_MODES[name]
        out.append(fn(hidden, mask, padded) if name == "weightedmean" else fn(hidden, mask))
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)
