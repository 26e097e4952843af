"""The vLLM backend gives sentence-transformers' vectors for every zoo shape vLLM can run, and refuses
before any work the ones it cannot (docs/models.md).

Run by ``scripts/test_vllm.sh`` in ``.venv-vllm`` (vLLM's CPU build), skipped elsewhere. Models are
tests/helpers/model_zoo.py's tiny ones; the reference is ``SentenceTransformer.encode_document`` /
``encode_query`` in float32; the engine pools, this project applies a Dense head once and normalises.
A head applied twice (vLLM's own and this project's) would give vectors of the wrong dimension or
direction: the LaBSE and EmbeddingGemma shapes catch it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")

from pipelines.config import ConfigError, load_config  # noqa: E402
from pipelines.embed.hf_encoder import padding_side_for  # noqa: E402
from pipelines.embed.postprocess import postprocess  # noqa: E402
from pipelines.embed.tokenizer import eos_to_append, load_tokenizer, tokenize_texts  # noqa: E402
from pipelines.embed.vllm_encoder import VLLMEncoder  # noqa: E402
from pipelines.run.model_plan import plan_model  # noqa: E402

VLLM_CPU = ["model.vllm.in_process=true", "model.vllm.enforce_eager=true", "model.vllm.gpu_memory_utilization=0.1"]
MIN_COSINE = 0.999  # vLLM's kernels against PyTorch's, in float32 (the bound for the vLLM backend)
# The shapes vLLM's CPU build runs here: a Dense head (applied once, not twice) and a decoder with an
# instruction prompt. Its CPU attention kernel refuses the zoo's 64-wide BERT in some batches
# ("Unsupported CPU attention configuration: head_dim=16"), and its XLM-R loader the zoo's config
# (transformers 5.19: no position_embedding_type): both vLLM limits, not this project's (2026-12-07).
SHAPES = ["labse", "qwen3_lasttoken"]
QUERIES = ["Which planet is the largest?", "Who painted the Mona Lisa?", "How do vaccines work?"]


def _unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _plan(model_dir):
    config = load_config(overrides=[f"model.path={model_dir}", "model.backend=vllm", "model.dtype=float32", *VLLM_CPU])
    return plan_model(config, model_dir, None)


@pytest.mark.parametrize("shape", SHAPES)
def test_vllm_gives_sentence_transformers_vectors(shape, model_zoo, sample_table):
    from sentence_transformers import SentenceTransformer

    model_dir = model_zoo(shape)
    plan = _plan(model_dir)
    model = plan.config.model
    docs = [t[:300] for t in sample_table.column("text").to_pylist()[:10]]
    st = SentenceTransformer(str(model_dir), device="cpu")
    expected = {"document": _unit(st.encode_document(docs)), "query": _unit(st.encode_query(QUERIES))}
    assert plan.output_dimension == st.get_embedding_dimension(), shape

    tokenizer = load_tokenizer(model.path, None, padding_side_for(model))
    eos = eos_to_append(tokenizer, model.append_eos, model.pooling)
    engine = VLLMEncoder(model, dimension=plan.dimension, normalize=True, max_tokens=plan.max_tokens)
    try:
        for role, texts, prompt in (("document", docs, model.document_prompt), ("query", QUERIES, model.query_prompt)):
            ids, _ = tokenize_texts(tokenizer, [prompt + t for t in texts], plan.max_tokens, eos)
            got = postprocess(engine.embed(ids), plan.dimension)
            assert got.shape == expected[role].shape, (shape, role, got.shape, expected[role].shape)
            worst = float((got * expected[role]).sum(axis=1).min())
            assert worst >= MIN_COSINE, f"{shape} {role}: worst cosine {worst:.6f} to sentence-transformers"
    finally:
        engine.close()


@pytest.mark.parametrize(
    "shape, named",
    [
        ("bert_max", "model.pooling=max cannot run on model.backend=vllm"),
        ("instructor_no_prompt", "include_prompt false"),
    ],
)
def test_what_vllm_cannot_pool_is_refused_before_any_work(shape, named, model_zoo):
    with pytest.raises(ConfigError, match=named):
        _plan(model_zoo(shape))
