"""Decoder-style embedders with the hf backend: EOS, left padding, last-token pooling, prompts.

Expected vectors are computed here with plain transformers on each text alone (no padding, no
pipeline code), so the pipeline's tokenizer, padding, pooling and prompt handling are all checked.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from connectors.lance.metadata import read_lineage
from pipelines.config import ConfigError, load_config
from pipelines.embed.hf_encoder import HFEncoder
from pipelines.embed.tokenizer import eos_to_append, load_tokenizer, tokenize_texts
from pipelines.run.runner import run_index
from pipelines.search.searcher import Searcher

QUERY_PROMPT = "Instruct: Given a question, retrieve the Wikipedia article that answers it\nQuery: "


def _model(path, **extra):
    # float32: compared with a float32 transformers loop to 1e-4 (auto would pick bf16 on some CPUs)
    overrides = [f"model.path={path}", "model.pooling=last", "model.dtype=float32"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(overrides=overrides).model


def _reference(model_dir, texts, prompt="", append_eos=True, max_tokens=512):
    """Last-token vectors from transformers, one text at a time, EOS appended by hand when asked."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    for text in texts:
        ids = tokenizer(prompt + text, truncation=True, max_length=max_tokens - append_eos)["input_ids"]
        ids += [tokenizer.eos_token_id] if append_eos else []
        with torch.inference_mode():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        out.append(hidden.numpy())
    vectors = np.stack(out)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_eos_is_appended_when_the_tokenizer_does_not(tiny_llama_dir):
    tokenizer = load_tokenizer(str(tiny_llama_dir), None, "left")
    eos = eos_to_append(tokenizer, "auto", "last")
    assert eos == tokenizer.eos_token_id
    ids, truncated = tokenize_texts(tokenizer, ["a short text", "word " * 500], max_tokens=16, eos_id=eos)
    assert ids[0] == tokenizer("a short text")["input_ids"] + [eos]
    assert ids[0][0] == tokenizer.bos_token_id
    assert len(ids[1]) == 16 and ids[1][-1] == eos and ids[1].count(eos) == 1
    assert truncated == [False, True]


def test_eos_is_not_doubled_when_the_tokenizer_adds_it(tiny_qwen3_dir):
    tokenizer = load_tokenizer(str(tiny_qwen3_dir), None, "left")
    assert eos_to_append(tokenizer, "auto", "last") is None
    assert eos_to_append(tokenizer, True, "last") is None
    ids, truncated = tokenize_texts(tokenizer, ["a short text", "word " * 500], max_tokens=16)
    eos = tokenizer.eos_token_id
    assert [x[-1] for x in ids] == [eos, eos] and [x.count(eos) for x in ids] == [1, 1]
    assert len(ids[1]) == 16 and truncated == [False, True]


@pytest.mark.parametrize(
    "setting, pooling, appends",
    [
        ("auto", "last", True),
        ("auto", "mean", False),
        (True, "mean", True),
        (False, "last", False),
    ],
)
def test_append_eos_setting(tiny_llama_dir, setting, pooling, appends):
    tokenizer = load_tokenizer(str(tiny_llama_dir), None, "left")
    assert (eos_to_append(tokenizer, setting, pooling) is not None) == appends


def test_append_eos_true_needs_an_eos_token():
    tokenizer = load_tokenizer("packaged:all-MiniLM-L6-v2", None, "right")  # BERT: [SEP], no EOS
    assert eos_to_append(tokenizer, "auto", "last") is None
    with pytest.raises(ConfigError, match="model.append_eos=true but the tokenizer has no EOS token"):
        eos_to_append(tokenizer, True, "last")


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen3_dir"])
def test_left_padded_batches_equal_each_text_alone(request, fixture, sample_table):
    model_dir = request.getfixturevalue(fixture)
    model = _model(model_dir)
    tokenizer = load_tokenizer(model.path, None, "left")
    texts = [t[: 40 * (i + 1)] for i, t in enumerate(sample_table.column("text").to_pylist()[:6])]
    ids, _ = tokenize_texts(tokenizer, texts, 128, eos_to_append(tokenizer, "auto", "last"))
    assert len({len(x) for x in ids}) == 6  # six lengths: every batch pads
    pooled = HFEncoder(model).embed(ids, batch_tokens=4096)
    got = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    expected = _reference(model_dir, texts, append_eos=fixture == "tiny_llama_dir")
    assert np.abs(got - expected).max() < 1e-4
    assert (got @ got.T)[~np.eye(6, dtype=bool)].max() < 0.99  # distinct texts, distinct vectors


def test_decoder_index_and_instruction_query(ray_cluster, tiny_llama_dir, sample_table, tmp_path):
    docs = sample_table.slice(0, 40)
    pq.write_table(docs, tmp_path / "docs.parquet")
    db = str(tmp_path / "db")
    config = load_config(
        overrides=[
            f"source.path={tmp_path / 'docs.parquet'}",
            f"sink.uri={db}",
            "sink.table=dec",
            f"model.path={tiny_llama_dir}",
            "model.pooling=last",
            "model.max_tokens=128",
            "model.dtype=float32",  # compared with a float32 transformers loop to 1e-4
            "index.type=none",
        ],
        data={"model": {"query_prompt": QUERY_PROMPT}},
    )
    summary = run_index(config)
    assert summary.rows_written == 40

    lineage = read_lineage(db, "dec")
    assert lineage["model"]["append_eos"] is True and lineage["model"]["pooling"] == "last"
    assert lineage["model"]["query_prompt"] == QUERY_PROMPT and lineage["model"]["document_prompt"] == ""
    assert lineage["model"]["padding_side"] == "auto"

    import lancedb

    table = lancedb.connect(db).open_table("dec").to_arrow()
    got = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    expected = _reference(tiny_llama_dir, table.column("text").to_pylist(), max_tokens=128)
    assert summary.truncated > 0  # long texts are cut one token early and still end with EOS
    assert np.abs(got - expected).max() < 1e-4  # documents: no prompt

    query = "Which planet is the largest?"
    searcher = Searcher.open(db, "dec")
    q = searcher.embed_queries([query])
    assert np.abs(q - _reference(tiny_llama_dir, [query], prompt=QUERY_PROMPT)).max() < 1e-4
    assert np.abs(q - _reference(tiny_llama_dir, [query])).max() > 1e-2  # the prompt changes the vector


def test_vllm_config_is_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="gpus_per_actor=1 must equal model.vllm.tensor_parallel_size=2"):
        load_config(overrides=["model.backend=vllm", "model.vllm.tensor_parallel_size=2", "compute.gpus_per_actor=1"])
    with pytest.raises(ConfigError, match="in_process needs vllm.tensor_parallel_size=1"):
        load_config(
            overrides=[
                "model.backend=vllm",
                "model.vllm.tensor_parallel_size=2",
                "compute.gpus_per_actor=2",
                "model.vllm.in_process=true",
            ]
        )
    with pytest.raises(ConfigError, match="cuda:N is not supported by backend vllm"):
        load_config(overrides=["model.backend=vllm", "model.device=cuda:1"])
    with pytest.raises(ConfigError, match="model.vllm.gpu_memory_utilization"):
        load_config(overrides=["model.vllm.gpu_memory_utilization=1.5"])
    config = load_config(
        overrides=["model.backend=vllm", "model.vllm.tensor_parallel_size=2", "compute.gpus_per_actor=2"]
    )
    assert config.model.vllm.tensor_parallel_size == 2


def test_vllm_backend_without_vllm_says_what_to_install():
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here (tests/integration/vllm_backend covers it)")
    from pipelines.embed.vllm_encoder import VLLMEncoder

    with pytest.raises(ImportError, match=r"pip install -e '\.\[gpu\]'"):
        VLLMEncoder(_model("packaged:all-MiniLM-L6-v2", **{"model.backend": "vllm"}), dimension=384, normalize=True)


def test_append_eos_is_part_of_the_embedding_space():
    from helpers.settled import settled
    from pipelines.lineage import LineageMismatchError, check_compatible, make_lineage

    config = settled(load_config())
    kwargs = dict(fingerprint="f" * 16, hidden_size=384, max_tokens=256, dimension=384)
    with_eos, without = make_lineage(config, append_eos=True, **kwargs), make_lineage(config, **kwargs)
    with pytest.raises(LineageMismatchError, match="model.append_eos: table has False, this run has True"):
        check_compatible(without, with_eos, "this run")
    older = make_lineage(config, **kwargs).to_dict()  # as stored
    del older["model"]["append_eos"]  # a table written before the key existed appended nothing
    check_compatible(older, without, "this run")
    with pytest.raises(LineageMismatchError, match="model.append_eos"):
        check_compatible(older, with_eos, "this run")
