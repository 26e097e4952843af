"""Truncate mode's shortcut: a long text's kept tokens from a prefix of it, accepted only when provably
the full text's.

In truncate mode a 20,000-token document keeps its first ``max_tokens`` tokens, yet tokenizing it
whole costs 80 times what the kept tokens cost. :func:`precut_tokenize` tokenizes a prefix instead
(cut before a space, about :func:`char_bound` characters long) and keeps the prefix's tokens only when
they cannot differ from the full text's:

- the tokenizer is *word-local* (:func:`word_local`): its normalizer changes characters one by one
  (or within a combining sequence, which a space ends), its pre-tokenizer splits at every space
  (BERT, whitespace splits, byte-level BPE's regex, SentencePiece's Metaspace with ``split``), and
  no added token contains a space. Then the tokens that end at or before a space which the prefix
  has, with a non-space character after it, are the full text's too: no step looks past that space
  and the word after it except through whitespace, which the prefix and the full text share;
- the prefix gives more than the kept tokens, and the first token past them ends at or before the
  prefix's last space. The kept tokens (and the one after, so the text was truncated) are then the
  full text's first ones, special tokens added the same way.

Anything else (a tokenizer that truncates on the left, or of another kind, such as a SentencePiece
BPE without a pre-split; a text without a space near the bound; a prefix too short) falls back to
tokenizing the whole text, so the result is always exactly what tokenizing the full text and
truncating gives (tests/unit/test_precut.py).
"""

from __future__ import annotations

import json
import math
import weakref
from typing import Optional, Sequence

__all__ = ["char_bound", "cut_point", "precut_tokenize", "word_local"]

# Normalizers and pre-tokenizers (tokenizers' JSON "type") for which a space is a hard boundary.
_LOCAL_NORMALIZERS = {
    "BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Strip", "Precompiled",
    "Prepend", "Nmt",
}  # fmt: skip
_SPLITTING_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
# English prose, to measure a tokenizer's characters per token (English is what tokenizers compress best).
_PROBE = (
    "The committee published its annual report on Tuesday, describing how the regional railway network "
    "had changed since the previous survey. Passenger numbers rose by about eleven percent, while freight "
    "traffic remained roughly stable; the authors attribute the growth to new timetables, cheaper monthly "
    "tickets and the reopening of two stations that had been closed for renovation. The report also notes "
    "that several older bridges will need major repairs within the next decade, and it recommends that "
    "the government set aside funds for this work before the costs increase further."
)
_RETRIES = (1, 2, 4)  # the bound, then two and four times it, then the whole text
_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def word_local(tokenizer) -> bool:
    """Whether a space in the text is a boundary no tokenizer step looks across (module docstring)."""
    if tokenizer not in _cache:
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a slow (Python) tokenizer has none
        spec = json.loads(backend.to_str()) if backend is not None else {}
        local = backend is not None and (
            _normalizer_local(spec.get("normalizer"))
            and _pre_tokenizer_splits(spec.get("pre_tokenizer"))
            and not any(" " in added["content"] for added in spec.get("added_tokens", []))
        )
        _cache[tokenizer] = {"local": local}
    return _cache[tokenizer]["local"]


def _normalizer_local(spec: Optional[dict]) -> bool:
    if spec is None:
        return True
    if spec["type"] == "Sequence":
        return all(_normalizer_local(part) for part in spec["normalizers"])
    if spec["type"] == "Replace":  # only XLM-R's collapsing of space runs: it keeps a space a space
        return spec.get("content") == " " and set(next(iter(spec["pattern"].values()))) <= set(" {2,}")
    return spec["type"] in _LOCAL_NORMALIZERS


def _pre_tokenizer_splits(spec: Optional[dict]) -> bool:
    """Some step splits at every space (a later step only splits the pieces further)."""
    if spec is None:
        return False
    if spec["type"] == "Sequence":
        return any(_pre_tokenizer_splits(part) for part in spec["pretokenizers"])
    if spec["type"] == "ByteLevel":
        return bool(spec.get("use_regex", True))
    if spec["type"] == "Metaspace":
        return bool(spec.get("split", True))
    return spec["type"] in _SPLITTING_PRE_TOKENIZERS


def char_bound(tokenizer, max_tokens: int) -> int:
    """Characters of prefix to tokenize for ``max_tokens`` kept tokens: 1.15 x (max_tokens + 1) x the
    tokenizer's characters per token on a paragraph of English prose (measured once per tokenizer).

    Correctness does not depend on it (a prefix too short is rejected and the text retried with a
    bound two, then four times larger, then whole); speed does: the prefix must reach the kept tokens
    in most texts, yet be as short as it can. The probe has longer words than most text (5.8
    characters a token with MiniLM's tokenizer, English Wikipedia 4.9), and other languages, code and
    numbers have fewer characters per token still, so they reach the kept tokens sooner; the 1.15
    covers documents with longer words than the probe's (on the Wikipedia sample all 500-token
    documents were accepted at 256 tokens with 1.1, a quarter at 0.8; ``bench/tokenizing.py``).
    """
    if tokenizer not in _cache:
        word_local(tokenizer)
    entry = _cache[tokenizer]
    if "chars_per_token" not in entry:
        n = len(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
        entry["chars_per_token"] = len(_PROBE) / max(1, n)
    return math.ceil(1.15 * (max_tokens + 1) * entry["chars_per_token"])


def cut_point(text: str, bound: int) -> Optional[tuple[int, int]]:
    """``(end, space)``: the prefix ``text[:end]`` ends in a non-space character and its last space
    is at ``space``; None when ``text[:bound]`` has no such cut (e.g. no space at all)."""
    end = text.rfind(" ", 0, bound + 1)
    if end <= 0:
        return None
    end = len(text[:end].rstrip())
    space = text.rfind(" ", 0, end)
    return (end, space) if space > 0 else None


def precut_tokenize(
    tokenizer, texts: Sequence[str], length: int, bound: int
) -> tuple[list[Optional[list[int]]], list[int]]:
    """The first ``length`` token ids (special tokens included) of each text over ``bound`` characters
    whose prefix passes the module's test; None for the others, whose indices come back as the second
    value (to be tokenized whole). Every accepted text was truncated."""
    ids: list[Optional[list[int]]] = [None] * len(texts)
    pending = [i for i, text in enumerate(texts) if len(text) > bound]
    rest = [i for i, text in enumerate(texts) if len(text) <= bound]
    if not word_local(tokenizer) or getattr(tokenizer, "truncation_side", "right") != "right":
        return ids, sorted(rest + pending)  # a tokenizer that keeps a text's end needs all of it
    for scale in _RETRIES:
        cuts = {i: cut_point(texts[i], bound * scale) for i in pending if len(texts[i]) > bound * scale}
        rest += [i for i in pending if cuts.get(i) is None]
        tried = [i for i in pending if cuts.get(i) is not None]
        pending = []
        for i, kept in zip(
            tried, _prefix_ids(tokenizer, [texts[i][: cuts[i][0]] for i in tried], [cuts[i][1] for i in tried], length)
        ):
            if kept is None:
                pending.append(i)
            else:
                ids[i] = kept
    return ids, sorted(rest + pending)


def _prefix_ids(tokenizer, prefixes: list[str], spaces: list[int], length: int) -> list[Optional[list[int]]]:
    """Each prefix's first window when the first token after it ends at or before the prefix's last
    space (the window's own tokens end before that token), else None."""
    if not prefixes:
        return []
    encoded = tokenizer(
        prefixes,
        truncation=True,
        max_length=length,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    first: list[Optional[list[int]]] = [None] * len(prefixes)
    out: list[Optional[list[int]]] = [None] * len(prefixes)
    windows = [0] * len(prefixes)
    for k, sample in enumerate(encoded["overflow_to_sample_mapping"]):
        windows[sample] += 1
        if windows[sample] == 1:
            first[sample] = encoded["input_ids"][k]
        elif windows[sample] == 2:  # starts with the first token after the kept ones
            content = [j for j, seq in enumerate(encoded.sequence_ids(k)) if seq is not None]
            if content and encoded["offset_mapping"][k][content[0]][1] <= spaces[sample]:
                out[sample] = first[sample]
    return out
