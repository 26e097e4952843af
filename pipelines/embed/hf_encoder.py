"""A Hugging Face ``transformers`` encoder: token ids in, pooled float32 vectors out.

Used by the encode stage (one instance per Ray actor) and by the query path, so documents and
queries go through exactly the same code.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from connectors.model_store import resolve_model_dir
from pipelines.config import ModelConfig
from pipelines.embed.batching import token_budget_batches
from pipelines.embed.head import DenseHead
from pipelines.embed.model_pipeline import UnsupportedModelError, dense_dimension
from pipelines.embed.model_settings import resolve_model_settings
from pipelines.embed.pooling import pool
from pipelines.embed.precision import planned_device, resolve_dtype, warn_if_emulated

__all__ = ["HFEncoder", "load_transformer", "padding_side_for", "pick_device"]

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
# Padded tokens per forward pass when compute.batch_tokens is "auto". On CPU, batches that fit the
# caches are fastest: 4096 ran MiniLM 20% faster than 16384 on a 2-core Xeon (bench/throughput.py);
# on GPU bigger batches keep the device busy.
AUTO_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


def padding_side_for(model: ModelConfig) -> str:
    """Left padding for last-token pooling (the last real token sits at the end), right otherwise."""
    if model.padding_side != "auto":
        return model.padding_side
    return "left" if "last" in model.pooling.split("+") else "right"


# Encoder-decoder models whose encoder alone embeds, loaded as sentence-transformers loads them (a T5's
# encoder through T5EncoderModel: AutoModel would build the whole encoder-decoder).
ENCODER_ONLY_CLASSES = {
    "t5": "T5EncoderModel",
    "mt5": "MT5EncoderModel",
    "umt5": "UMT5EncoderModel",
    "longt5": "LongT5EncoderModel",
}


def load_transformer(model_dir, dtype):
    """The model's transformer, as sentence-transformers loads it, with PyTorch's SDPA attention where
    the architecture has it (else its own)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(model_dir))
    name = ENCODER_ONLY_CLASSES.get(config.model_type)
    if name is None and getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{model_dir}: encoder-decoder model type {config.model_type!r} is not supported "
            f"(supported encoder-only loads: {sorted(ENCODER_ONLY_CLASSES)})"
        )
    cls = getattr(transformers, name) if name else transformers.AutoModel
    try:
        return cls.from_pretrained(str(model_dir), dtype=dtype, attn_implementation="sdpa")
    except ValueError as exc:  # "... does not support an attention implementation through sdpa"
        if "sdpa" not in str(exc).lower():
            raise
        return cls.from_pretrained(str(model_dir), dtype=dtype)


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"model.device={requested} but no CUDA device is visible to this worker "
            "(set compute.gpus_per_actor >= 1 on a GPU node)"
        )
    return requested


class HFEncoder:
    """Loads the model once; :meth:`embed` runs length-sorted, token-budgeted forward passes."""

    def __init__(self, model: ModelConfig, threads: Optional[int] = None, storage=None):
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per actor start is noise in a job log
        if threads:
            torch.set_num_threads(threads)
        self.config = model
        self.device = pick_device(model.device)
        if model.dtype == "auto":  # a job resolves it in preflight; a direct user gets the same rule here
            model = model.model_copy(update={"dtype": resolve_dtype("auto", planned_device(self.device, 0))[0]})
            self.config = model
        warn_if_emulated(model.dtype, self.device)
        dtype = getattr(torch, _DTYPES[model.dtype])
        model_dir = resolve_model_dir(model.path, model.revision, storage)
        resolved = resolve_model_settings(model, model_dir)  # a job resolved them already: then a no-op
        model = self.config = resolved.model
        self.model = load_transformer(model_dir, dtype).to(self.device).eval()
        self.head = None
        if model.dense:  # the model's Dense layers, in its dtype, after pooling (pipelines/embed/head.py)
            self.head = DenseHead(model_dir, resolved.pipeline.dense).to(self.device, dtype).eval()
        hidden = int(self.model.config.hidden_size)
        self.hidden_size = dense_dimension(resolved.pipeline, hidden, model.pooling, model.dense)  # what embed returns
        self.left_pad = padding_side_for(model) == "left"
        from pipelines.embed.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(model.path, model.revision, padding_side_for(model), storage)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.auto_batch_tokens = AUTO_BATCH_TOKENS["cuda" if self.device.startswith("cuda") else "cpu"]

    def prompt_tokens(self, prompt: str) -> int:
        """How many leading tokens of a text are ``prompt``'s, for a model that pools without them
        (``model.include_prompt`` false); 0 when it pools them."""
        from pipelines.embed.tokenizer import prompt_length

        return 0 if self.config.include_prompt or not prompt else prompt_length(self.tokenizer, prompt)

    def _pad(self, rows: Sequence[Sequence[int]]):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row)
            if self.left_pad:
                ids[i, width - n :] = torch.as_tensor(row)
                mask[i, width - n :] = 1
            else:
                ids[i, :n] = torch.as_tensor(row)
                mask[i, :n] = 1
        return ids.to(self.device), mask.to(self.device)

    def embed(
        self, token_ids: Sequence[Sequence[int]], batch_tokens: Union[int, str, None] = None, prompt_tokens: int = 0
    ) -> np.ndarray:
        """The model's (not yet normalised) float32 vectors, one per input row, in input order: pooled,
        then through the model's Dense head when it has one.

        ``batch_tokens``: padded tokens per forward pass; None or "auto" picks by device.
        ``prompt_tokens``: leading tokens left out of the pool (:meth:`prompt_tokens`).
        """
        import torch

        if batch_tokens in (None, "auto"):
            batch_tokens = self.auto_batch_tokens

        out = np.zeros((len(token_ids), self.hidden_size), dtype=np.float32)
        lengths = [len(r) for r in token_ids]
        with torch.inference_mode():
            for batch in token_budget_batches(lengths, batch_tokens):
                ids, mask = self._pad([token_ids[i] for i in batch])
                extra = {}
                if self.left_pad:
                    # Positions count from each text's first real token, as if it ran alone (and as
                    # vLLM runs it, unpadded); without this they would start at the pad count.
                    extra["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
                hidden = self.model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
                pooled = pool(self.config.pooling, hidden, mask, prompt_tokens)
                if self.head is not None:
                    pooled = self.head(pooled)
                out[batch] = pooled.float().cpu().numpy()
        return out
