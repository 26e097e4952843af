"""Tiny decoder-style embedding models built from a config: random weights, real tokenizers.

No decoder embedding model is installable here, so the decoder code paths (last-token pooling, left
padding, EOS, instruction prompts) are tested on two 2-layer models shaped like the real ones, built
by the fixtures of the same names in tests/conftest.py:

- ``tiny_llama_dir``: a ``LlamaModel`` (E5-Mistral's layout: a bare decoder, architecture
  ``LlamaModel``) whose tokenizer adds BOS and no EOS, like Llama/Mistral tokenizers, so the
  pipeline must append EOS itself.
- ``tiny_qwen3_dir``: a ``Qwen3ForCausalLM`` checkpoint (Qwen3-Embedding's layout) whose tokenizer
  ends every text with ``<|endoftext|>`` itself (so nothing may be appended), and whose config
  declares Matryoshka support (``is_matryoshka``), as vLLM reads it.

Tokenizers are byte-level BPE trained in a second on the sample corpus. Weights use a large
initialiser range so that different texts get clearly different vectors: agreement between two
backends then means something.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["build_tokenizer", "build_tiny_decoder"]

VOCAB = 512


def build_tokenizer(texts, style: str):
    """A fast BPE tokenizer: ``style='llama'`` adds BOS only, ``'qwen'`` appends EOS only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>"] if style == "llama" else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", model_max_length=512)
    eot = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A <|endoftext|> $B <|endoftext|>", special_tokens=[("<|endoftext|>", eot)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=512
    )


def build_tiny_decoder(out: Path, arch: str, tokenizer, matryoshka: bool = False) -> Path:
    """Save a 2-layer, 64-dim ``LlamaModel`` (arch='llama') or ``Qwen3ForCausalLM`` (arch='qwen3')."""
    import torch

    torch.manual_seed(0)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        initializer_range=0.5,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        dtype="float32",
    )
    if arch == "llama":
        from transformers import LlamaConfig, LlamaModel

        model = LlamaModel(LlamaConfig(**common))
    else:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        model = Qwen3ForCausalLM(Qwen3Config(tie_word_embeddings=True, **common))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if matryoshka:
        config_path = out / "config.json"
        config = json.loads(config_path.read_text())
        config["is_matryoshka"] = True
        config_path.write_text(json.dumps(config, indent=2))
    return out
