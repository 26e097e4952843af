"""Truncate mode's pre-cut (pipelines/embed/precut.py) keeps exactly the tokens of the full text.

For each kind of tokenizer the pipeline meets (BERT WordPiece with NFD accent stripping, byte-level
BPE like Llama's and Qwen's, SentencePiece-style Unigram like XLM-R's and T5's, Unigram behind NFKC
and a space-collapsing Replace, and a Gemma-style BPE without a pre-split, which must not be pre-cut),
``tokenize_texts`` must give the ids (and so the attention masks) and the truncation flags of
tokenizing the whole text and truncating: on random texts and on adversarial ones (no spaces, long
words, accents, combining marks, CJK, emoji, whitespace runs, control characters, texts around the
bound), with prompts and with an appended EOS.
"""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest

from helpers import model_zoo
from helpers.tiny_decoders import build_tokenizer
from pipelines.config import ModelConfig
from pipelines.embed.precut import char_bound, cut_point, precut_tokenize, word_local
from pipelines.embed.tokenizer import load_tokenizer, tokenize_texts

PROMPTS = ["", "query: ", "Instruct: Given a question, retrieve passages\nQuery:"]
LIMITS = [8, 256]


def _unigram_nfkc():
    from tokenizers import Regex, normalizers

    tok = model_zoo._xlmr_tokenizer()
    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    return tok


BUILDERS = {
    "wordpiece_minilm": lambda: load_tokenizer(ModelConfig().path, None, "right"),
    "bytelevel_llama": lambda: build_tokenizer(model_zoo._corpus(), "llama"),
    "bytelevel_qwen": lambda: build_tokenizer(model_zoo._corpus(), "qwen"),
    "bytelevel_modernbert": model_zoo._modernbert_tokenizer,
    "unigram_xlmr": model_zoo._xlmr_tokenizer,
    "unigram_t5": model_zoo._t5_tokenizer,
    "unigram_nfkc": _unigram_nfkc,
    "bpe_gemma_no_split": model_zoo._gemma_tokenizer,
}
LOCAL = set(BUILDERS) - {"bpe_gemma_no_split"}


@pytest.fixture(scope="module", params=list(BUILDERS))
def tokenizer(request):
    return request.param, BUILDERS[request.param]()


def _wiki() -> list[str]:
    return pq.read_table(model_zoo.SAMPLE, columns=["text"]).column("text").to_pylist()


def _random_texts(seed: int, n: int) -> list[str]:
    """Wiki text with random accents, CJK, emoji, space runs, control characters and long words."""
    rng = random.Random(seed)
    wiki = _wiki()
    extras = ["e\u0301", "café", "ñ", "漢字", "テキスト", "😀", "👍🏽", "👩\u200d👩\u200d👧", "\u3000", "\u00a0",
              "\u200b", "\x00", "\ufffd", "\t", "\n\n", "  ", " \u0301", "x" * 120, "1234567", "!!!?", "[SEP]",
              "<mask>", "</s>", "<|endoftext|>"]  # fmt: skip
    texts = []
    for _ in range(n):
        words = " ".join(rng.sample(wiki, 6)).split(" ")
        for _ in range(rng.randrange(0, 40)):
            words.insert(rng.randrange(len(words)), rng.choice(extras))
        joiners = [" "] * 20 + ["", "  ", "\n", " \u3000"]
        text = words[0] + "".join(rng.choice(joiners) + w for w in words[1:])
        texts.append(text[: rng.randrange(50, len(text) + 1)])
    return texts


def _adversarial(bound: int) -> list[str]:
    wiki = " ".join(_wiki()[:30])
    near = [wiki[: bound + d] for d in range(-3, 4)]  # just at the bound
    spaced = ["x" * (bound - 1 + d) + " " + "y" * 5 + " z" for d in range(-2, 3)]  # the cut's space at the bound
    return (
        near
        + spaced
        + [
            "a" * 20_000,  # no space at all
            "word " * 2_000,
            ("x" * 150 + " ") * 60,  # words longer than WordPiece's 100 characters: one [UNK] each
            "café naïve re\u0301sume\u0301 Ångström " * 250,  # accents, precomposed and combining
            " \u0301" * 2_000 + " end",  # combining marks right after spaces
            "漢字テキスト中文" * 600,
            "漢字 テキスト 中文 " * 500,
            "😀👍🏽👩\u200d👩\u200d👧 " * 600,
            "foo" + " " * 3_000 + "bar " * 100,
            ("a\u3000b\u00a0c\t\nd  " * 600),
            ("\x00\ufffd\u200b " * 1_000) + wiki,
            ("1234567890 " * 700),
            ("!!!??? ... --- " * 500),
            wiki[:bound] + " " * 1_000,  # space runs up to the end
            ("[SEP] <mask> </s> <|endoftext|> " * 300),
            "",
            " ",
            wiki,
        ]
    )


def _reference(tok, texts, length):
    full = tok(texts, truncation=True, max_length=length)
    whole = tok(texts)["input_ids"]
    return full["input_ids"], full["attention_mask"], [len(w) > length for w in whole]


def _check(tok, texts, max_tokens, eos_id=None):
    ids, truncated = tokenize_texts(tok, texts, max_tokens, eos_id)
    length = max(1, max_tokens - (eos_id is not None))
    ref_ids, ref_mask, ref_truncated = _reference(tok, texts, length)
    if eos_id is not None:
        ref_ids = [x + [eos_id] if x else x for x in ref_ids]
        ref_mask = [m + [1] if m else m for m in ref_mask]
    for k, text in enumerate(texts):
        assert ids[k] == ref_ids[k], (text[:80], len(text))
        assert [1] * len(ids[k]) == ref_mask[k]  # the encoder's mask: one per kept token
    assert truncated == ref_truncated


def test_word_local_kinds(tokenizer):
    name, tok = tokenizer
    assert word_local(tok) == (name in LOCAL)


@pytest.mark.parametrize("max_tokens", LIMITS)
def test_random_texts_keep_the_full_texts_tokens(tokenizer, max_tokens):
    _, tok = tokenizer
    texts = _random_texts(max_tokens, 60)
    prompt_texts = [PROMPTS[k % len(PROMPTS)] + t for k, t in enumerate(texts)]
    _check(tok, prompt_texts, max_tokens)
    _check(tok, prompt_texts, max_tokens, eos_id=tok.eos_token_id if tok.eos_token_id is not None else 0)


@pytest.mark.parametrize("max_tokens", LIMITS)
def test_adversarial_texts_keep_the_full_texts_tokens(tokenizer, max_tokens):
    _, tok = tokenizer
    texts = _adversarial(char_bound(tok, max_tokens))
    _check(tok, texts, max_tokens)
    _check(tok, [PROMPTS[2] + t for t in texts], max_tokens, eos_id=tok.eos_token_id or 0)


def test_the_precut_is_taken(tokenizer):
    """Long texts are mostly cut (else the tests above would not test the cut)."""
    name, tok = tokenizer
    long = [" ".join(_wiki()[k : k + 20]) for k in range(0, 400, 20)]
    ids, whole = precut_tokenize(tok, long, 64, char_bound(tok, 64))
    accepted = sum(x is not None for x in ids)
    assert accepted == (len(long) if name in LOCAL else 0)
    assert sorted(whole) == [k for k, x in enumerate(ids) if x is None]


@pytest.mark.parametrize("bound", [30, 60, 90])
def test_a_bound_too_small_is_rejected(tokenizer, bound):
    """A cut that would lose kept tokens (a prefix shorter than the kept tokens, as with a bound too
    small) must fall back: cutting there blindly gives other ids, the pre-cut gives the full text's."""
    _, tok = tokenizer
    length = 128
    texts = [" ".join(_wiki()[k : k + 5]) for k in range(0, 100, 5)]
    texts = [t for t in texts if cut_point(t, bound)]
    blind = [tok(t[: cut_point(t, bound)[0]], truncation=True, max_length=length)["input_ids"] for t in texts]
    reference, _, _ = _reference(tok, texts, length)
    assert len(texts) >= 10 and all(b != r for b, r in zip(blind, reference))
    ids, whole = precut_tokenize(tok, texts, length, bound)
    assert all(x is None or x == r for x, r in zip(ids, reference))
    _check(tok, texts, length)


def test_a_tokenizer_that_truncates_on_the_left_is_not_cut(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir), truncation_side="left")
    texts = [" ".join(_wiki()[k : k + 20]) for k in range(0, 100, 20)]
    assert precut_tokenize(tok, texts, 64, char_bound(tok, 64))[1] == list(range(len(texts)))
    _check(tok, texts, 64)


def test_cut_point():
    assert cut_point("abc def ghi", 9) == (7, 3)  # cut before the space at 7; its last space at 3
    assert cut_point("abc  def   ghi", 12) == (8, 4)  # space runs are dropped from the prefix's end
    assert cut_point("a" * 100, 50) is None  # no space
    assert cut_point("abcdef ghi", 9) is None  # only one word before the cut: no space inside the prefix


def test_minilm_vectors_of_long_documents_match_sentence_transformers(minilm_dir):
    """What the encoder gets from the pre-cut embeds like sentence-transformers' own truncation: long
    documents (20,000 and 2,000 characters, and a 5,000-character word, one [UNK]) with MiniLM at its 256 tokens."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from pipelines.embed.hf_encoder import HFEncoder

    wiki = _wiki()
    texts = ["\n\n".join(wiki[k : k + 40])[:20_000] for k in range(0, 160, 40)]
    texts += ["\n\n".join(wiki[k : k + 8])[:2_000] for k in range(200, 240, 8)] + ["a" * 5_000]
    tokenizer = load_tokenizer(str(minilm_dir), None, "right")
    ids, truncated = tokenize_texts(tokenizer, texts, 256)
    assert all(truncated[:-1]) and sum(x is not None for x in precut_tokenize(tokenizer, texts, 256, 1_500)[0]) >= 8
    encoder = HFEncoder(ModelConfig(path=str(minilm_dir), dtype="float32", device="cpu"), threads=1)
    got = np.asarray(encoder.embed(ids), dtype=np.float64)
    expected = SentenceTransformer(str(minilm_dir), device="cpu").encode(texts, convert_to_numpy=True)
    cosine = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999, cosine
