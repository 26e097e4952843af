"""Tokenization: texts to token-id lists, truncated at the model's limit or split into windows.

Runs as its own Ray Data stage on CPU, so the encoder actors spend their time in the forward pass.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from connectors.model_store import resolve_model_dir
from pipelines.config import ConfigError
from pipelines.embed.precut import char_bound, precut_tokenize

__all__ = [
    "chunk_texts",
    "chunk_window",
    "effective_max_tokens",
    "eos_to_append",
    "load_tokenizer",
    "prompt_length",
    "tokenize_texts",
]


@lru_cache(maxsize=4)
def load_tokenizer(model_path: str, revision: Optional[str], padding_side: str, storage=None):
    """The model's fast tokenizer, once per worker process (``storage``: for an s3:// model)."""
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(model_path, revision, storage)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = padding_side
    if _lowercases(model_dir):
        _add_lowercase(tokenizer)
    if tokenizer.pad_token_id is None:  # decoder tokenizers often have none
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _lowercases(model_dir: Path) -> bool:
    """sentence-transformers' ``do_lower_case`` (sentence_bert_config.json): lowercase every text."""
    import json

    config = model_dir / "sentence_bert_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("do_lower_case", False))


def _add_lowercase(tokenizer) -> None:
    """Put a Lowercase normalizer first in the fast tokenizer, as sentence-transformers does for
    ``do_lower_case`` (unless it lowercases already)."""
    from tokenizers.normalizers import Lowercase
    from tokenizers.normalizers import Sequence as NormalizerSequence

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    if current is not None and "Lowercase" in repr(current):
        return
    parts = [Lowercase()] + (list(current) if isinstance(current, NormalizerSequence) else [current] if current else [])
    backend.normalizer = NormalizerSequence(parts)


def prompt_length(tokenizer, prompt: str) -> int:
    """Tokens a text's ``prompt`` prefix takes, special tokens before it included and a trailing special
    token (EOS, SEP) not: what sentence-transformers leaves out of the pool for ``include_prompt: false``."""
    ids = tokenizer(prompt)["input_ids"]
    return len(ids) - (1 if ids and ids[-1] in set(tokenizer.all_special_ids) else 0)


def effective_max_tokens(model_dir: Path, tokenizer, configured: Optional[int]) -> int:
    """The token limit: configured, else sentence-transformers' ``max_seq_length``, else the model's."""
    import json

    if configured:
        return configured
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        limit = json.loads(st_config.read_text()).get("max_seq_length")
        if limit:
            return int(limit)
    limits = [tokenizer.model_max_length]
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("max_position_embeddings"):
        limits.append(int(config["max_position_embeddings"]))
    return int(min(x for x in limits if x and x < 10**8))


def _windows(tokenizer, texts: Sequence[str], max_tokens: int, stride: int, offsets: bool):
    return tokenizer(
        list(texts),
        truncation=True,
        max_length=max_tokens,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=offsets,
        return_attention_mask=False,
        return_token_type_ids=False,
    )


def eos_to_append(tokenizer, append_eos, pooling: str) -> Optional[int]:
    """The EOS id the pipeline must append to every text, or None when it appends nothing.

    Decoder embedders pool the hidden state of a final EOS token (E5-Mistral appends it by hand;
    Qwen3-Embedding's tokenizer adds it itself). ``append_eos`` (``model.append_eos``): True ends
    every text with EOS, False leaves texts as the tokenizer makes them, "auto" is True for
    last-token pooling. EOS is appended only when the tokenizer does not already end texts with it.

    Raises:
        ConfigError: ``append_eos`` is True and the tokenizer has no EOS token.
    """
    explicit = append_eos is True
    if append_eos == "auto":
        append_eos = "last" in pooling.split("+")
    if not append_eos:
        return None
    eos = tokenizer.eos_token_id
    if eos is None:
        if explicit:
            raise ConfigError("model.append_eos=true but the tokenizer has no EOS token")
        return None
    probe = tokenizer("a")["input_ids"]
    return None if probe and probe[-1] == eos else int(eos)


def tokenize_texts(
    tokenizer, texts: Sequence[str], max_tokens: int, eos_id: Optional[int] = None
) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text (special tokens included) cut at ``max_tokens``, and which were cut.

    A long text whose kept tokens a prefix of it provably gives is tokenized on that prefix
    (:mod:`pipelines.embed.precut`); the others whole, all in one batched call, where the tokenizer
    reports overflow windows: a text with more than one window was truncated, and only its first
    window is kept. With ``eos_id`` (see :func:`eos_to_append`) each text is cut one
    token shorter and ends with that id, so the pooled last token is EOS even for a truncated text.
    """
    if not texts:
        return [], []
    length = max(1, max_tokens - (eos_id is not None))
    ids, whole = precut_tokenize(tokenizer, texts, length, char_bound(tokenizer, length))
    truncated = [x is not None for x in ids]
    encoded = _windows(tokenizer, [texts[i] for i in whole], length, 0, offsets=False) if whole else {}
    for window, sample in zip(encoded.get("input_ids", []), encoded.get("overflow_to_sample_mapping", [])):
        if ids[whole[sample]] is None:
            ids[whole[sample]] = window
        else:
            truncated[whole[sample]] = True
    out = [x if x is not None else [] for x in ids]
    if eos_id is not None:
        out = [x + [eos_id] if x else x for x in out]
    return out, truncated


def chunk_window(tokenizer, max_tokens: int, prompt: str, eos_id: Optional[int], overlap: int) -> int:
    """Tokens per chunk window handed to :func:`chunk_texts`: ``max_tokens`` less the prompt's tokens
    and an appended EOS (both added to every window afterwards).

    Raises:
        ConfigError: naming ``embed.chunk_overlap`` when the overlap leaves a window no room to move
            forward (it must be below the window's text tokens, special tokens not counted).
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    window = max_tokens - len(prompt_ids) - (eos_id is not None)
    room = window - tokenizer.num_special_tokens_to_add(pair=False)
    if overlap >= room:
        raise ConfigError(
            f"embed.chunk_overlap={overlap} must be below the {room} text tokens of a chunk "
            f"(model.max_tokens={max_tokens} less prompt and special tokens)"
        )
    return window


def chunk_texts(
    tokenizer, texts: Sequence[str], max_tokens: int, overlap: int
) -> list[tuple[int, list[int], int, int]]:
    """Token windows of ``max_tokens`` (special tokens included) overlapping by ``overlap`` tokens.

    Returns ``(text_index, token_ids, char_start, char_end)`` per window, in order; the character
    span locates the window's text in the original string.
    """
    if not texts:
        return []
    encoded = _windows(tokenizer, texts, max_tokens, overlap, offsets=True)
    out = []
    for window, sample, spans in zip(
        encoded["input_ids"], encoded["overflow_to_sample_mapping"], encoded["offset_mapping"]
    ):
        real = [s for s in spans if s[1] > s[0]]  # special tokens have empty spans
        start, end = (real[0][0], real[-1][1]) if real else (0, 0)
        out.append((sample, window, start, end))
    return out
