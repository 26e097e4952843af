"""Reading a model's own pipeline (pipelines/embed/model_pipeline.py) and settling ``auto`` settings from it
(pipelines/embed/model_settings.py, pipelines/run/model_plan.py).

Model directories are the packaged MiniLM copied with edited sentence-transformers files: the files are
what is read here; the vectors they give are compared with sentence-transformers itself in
tests/integration/test_model_conformance.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from connectors.lance.lineage import ModelLineage
from connectors.model_store import model_fingerprint
from pipelines.config import ConfigError, ModelConfig, load_config
from pipelines.embed.model_pipeline import DenseLayer, UnsupportedModelError, read_model_pipeline
from pipelines.embed.model_settings import resolve_model_settings
from pipelines.lineage import vector_key
from pipelines.run.model_plan import plan_model

LEGACY_CLS = {
    "word_embedding_dimension": 384,
    "pooling_mode_cls_token": True,
    "pooling_mode_mean_tokens": False,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}


@pytest.fixture
def model(tmp_path, minilm_dir):
    """A writable copy of MiniLM's directory (weights linked, JSON files copied)."""
    out = tmp_path / "model"
    out.mkdir()
    for entry in Path(minilm_dir).iterdir():
        if entry.is_dir():
            shutil.copytree(entry, out / entry.name)
        elif entry.suffix == ".json" or entry.name.endswith(".txt"):
            shutil.copy(entry, out / entry.name)
        else:
            (out / entry.name).symlink_to(entry)
    return out


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _modules(*kinds: tuple[str, str]) -> list[dict]:
    return [{"idx": i, "name": str(i), "path": p, "type": t} for i, (t, p) in enumerate(kinds)]


TRANSFORMER = ("sentence_transformers.models.Transformer", "")


def test_both_pooling_formats_read_the_same(model):
    _write(model / "1_Pooling" / "config.json", LEGACY_CLS)
    legacy = read_model_pipeline(model)
    _write(model / "1_Pooling" / "config.json", {"embedding_dimension": 384, "pooling_mode": "cls"})
    new = read_model_pipeline(model)
    assert legacy == new and new.pooling == "cls" and new.include_prompt and new.normalize
    _write(model / "1_Pooling" / "config.json", {"embedding_dimension": 384, "pooling_mode": ["lasttoken"]})
    assert read_model_pipeline(model).pooling == "last"
    both = {**LEGACY_CLS, "pooling_mode_mean_tokens": True, "include_prompt": False}
    _write(model / "1_Pooling" / "config.json", both)
    read = read_model_pipeline(model)
    assert read.pooling == "cls+mean" and read.include_prompt is False  # concatenated, in the library's order


def test_a_plain_transformers_directory_has_no_pipeline(model):
    (model / "modules.json").unlink()
    assert read_model_pipeline(model) is None
    settled = resolve_model_settings(ModelConfig(path=str(model)), model)
    assert (settled.model.pooling, settled.model.dense, settled.model.query_prompt) == ("mean", False, "")
    assert settled.reasons["pooling"] == "default: the model states none"


@pytest.mark.parametrize(
    "kind, match",
    [
        ("sentence_transformers.models.StaticEmbedding", "StaticEmbedding"),
        ("my_company.layers.Whitening", "Whitening"),
        ("sentence_transformers.models.LayerNorm", "LayerNorm"),
    ],
)
def test_a_module_the_project_cannot_run_is_named(model, kind, match):
    pooling = ("sentence_transformers.models.Pooling", "1_Pooling")
    _write(model / "modules.json", _modules(TRANSFORMER, pooling, (kind, "2_X")))
    with pytest.raises(UnsupportedModelError, match=rf"module 2 \('{kind}'.*{match}.*not supported"):
        read_model_pipeline(model)


def test_static_embeddings_and_dense_before_pooling_are_refused(model):
    _write(model / "modules.json", _modules(("sentence_transformers.models.StaticEmbedding", "")))
    with pytest.raises(UnsupportedModelError):
        read_model_pipeline(model)
    _write(model / "modules.json", _modules(TRANSFORMER, ("sentence_transformers.models.Dense", "1_Dense")))
    _write(model / "1_Dense" / "config.json", {"in_features": 384, "out_features": 8})
    with pytest.raises(UnsupportedModelError, match="before pooling"):
        read_model_pipeline(model)


def test_dense_layers_are_read_in_order_and_a_foreign_activation_refused(model):
    pooling = ("sentence_transformers.models.Pooling", "1_Pooling")
    dense = ("sentence_transformers.models.Dense", "2_Dense"), ("sentence_transformers.models.Dense", "3_Dense")
    _write(model / "modules.json", _modules(TRANSFORMER, pooling, *dense))
    _write(model / "2_Dense" / "config.json", {"in_features": 384, "out_features": 64, "bias": False,
                                               "activation_function": "torch.nn.modules.linear.Identity"})  # fmt: skip
    _write(model / "3_Dense" / "config.json", {"in_features": 64, "out_features": 32})
    read = read_model_pipeline(model)
    assert read.dense == (
        DenseLayer("2_Dense", 384, 64, bias=False, activation="torch.nn.modules.linear.Identity"),
        DenseLayer("3_Dense", 64, 32),  # sentence-transformers' defaults: bias, Tanh
    )
    chain = resolve_model_settings(ModelConfig(path=str(model)), model).modules  # the head settled on
    assert chain == ["Transformer", "Pooling(mean)", "Dense(384->64, Identity)", "Dense(64->32, Tanh)"]
    _write(model / "3_Dense" / "config.json", {"in_features": 64, "out_features": 32, "activation_function": "x.Y"})
    with pytest.raises(UnsupportedModelError, match="'x.Y' is not a torch module"):
        read_model_pipeline(model)


def test_prompts_follow_encode_query_and_encode_document(model):
    settings = {"prompts": {"query": "q: ", "passage": "p: ", "corpus": "c: "}, "default_prompt_name": None}
    _write(model / "config_sentence_transformers.json", settings)
    read = read_model_pipeline(model)
    assert (read.query_prompt(), read.document_prompt()) == ("q: ", "p: ")  # passage before corpus
    # sentence-transformers 6 saves empty "query"/"document" placeholders: an empty one is passed over
    e5 = {"prompts": {"query": "query: ", "document": "", "passage": "passage: "}}
    _write(model / "config_sentence_transformers.json", e5)
    read = read_model_pipeline(model)
    assert (read.document_prompt_name(), read.document_prompt()) == ("passage", "passage: ")
    _write(model / "config_sentence_transformers.json", {"prompts": {"all": "x: "}, "default_prompt_name": "all"})
    read = read_model_pipeline(model)
    assert (read.query_prompt(), read.document_prompt()) == ("x: ", "x: ")  # the default prompt, for both
    _write(model / "config_sentence_transformers.json", {"prompts": {"a": "x"}, "default_prompt_name": "b"})
    with pytest.raises(UnsupportedModelError, match="default_prompt_name 'b'"):
        read_model_pipeline(model)


def test_settings_come_from_the_config_then_the_table_then_the_model(model):
    _write(model / "1_Pooling" / "config.json", LEGACY_CLS)
    _write(model / "config_sentence_transformers.json", {"prompts": {"query": "query: ", "document": "doc: "}})
    from_model = resolve_model_settings(ModelConfig(path=str(model)), model)
    assert (from_model.model.pooling, from_model.model.query_prompt, from_model.model.document_prompt) == (
        "cls",
        "query: ",
        "doc: ",
    )
    assert from_model.reasons["pooling"] == "model's 1_Pooling/config.json"
    assert "prompts['query']" in from_model.reasons["query_prompt"]
    # A table made before the model's files were read recorded mean and no prompts: an append keeps them.
    recorded = ModelLineage(path=str(model), fingerprint="f", pooling="mean", query_prompt="", document_prompt="")
    on_table = resolve_model_settings(ModelConfig(path=str(model)), model, recorded, "docs")
    assert (on_table.model.pooling, on_table.model.query_prompt, on_table.model.dense) == ("mean", "", False)
    assert on_table.reasons["pooling"] == "table 'docs''s lineage"
    explicit = resolve_model_settings(ModelConfig(path=str(model), pooling="max", query_prompt=""), model, recorded)
    assert (explicit.model.pooling, explicit.model.query_prompt) == ("max", "")
    assert explicit.reasons["pooling"] == "set in the config"
    with pytest.raises(ConfigError, match="model.dense=true but .* has no Dense modules"):
        resolve_model_settings(ModelConfig(path=str(model), dense=True), model)


def _config(model, *overrides):
    return load_config(overrides=[f"model.path={model}", *overrides])


def test_vllm_refuses_what_its_pooler_cannot_compute_before_any_work(model):
    _write(model / "1_Pooling" / "config.json", {"embedding_dimension": 384, "pooling_mode": "max"})
    with pytest.raises(ConfigError, match="model.pooling=max cannot run on model.backend=vllm"):
        plan_model(_config(model, "model.backend=vllm"), model, None)
    _write(model / "1_Pooling" / "config.json", {"embedding_dimension": 384, "include_prompt": False})
    with pytest.raises(ConfigError, match="include_prompt false.*use model.backend=hf"):
        plan_model(_config(model, "model.backend=vllm"), model, None)
    assert plan_model(_config(model), model, None).config.model.include_prompt is False  # hf computes it


def test_the_metric_follows_the_model_unless_set_and_a_manhattan_model_must_choose(model):
    _write(model / "config_sentence_transformers.json", {"similarity_fn_name": "dot"})
    assert plan_model(_config(model), model, None).config.index.metric == "dot"
    assert plan_model(_config(model, "index.metric=l2"), model, None).config.index.metric == "l2"
    _write(model / "config_sentence_transformers.json", {"similarity_fn_name": "manhattan"})
    with pytest.raises(ConfigError, match="'manhattan'.*set index.metric"):
        plan_model(_config(model), model, None)


def test_declared_matryoshka_dimensions_warn_for_an_untrained_cut(model):
    config = json.loads((model / "config.json").read_text())
    _write(model / "config.json", {**config, "matryoshka_dimensions": [384, 256, 128]})
    assert plan_model(_config(model, "embed.dimension=128"), model, None).warnings() == []
    [warning] = plan_model(_config(model, "embed.dimension=96"), model, None).warnings()
    assert "embed.dimension=96 is not one of the Matryoshka dimensions the model declares [128, 256, 384]" in warning


def test_the_fingerprint_covers_dense_weights_and_keeps_minilms(model, minilm_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    cache = tmp_path / "digests.json"
    # Pinned: tables made before Dense weights counted carry it (computed on the code of before).
    assert model_fingerprint(Path(minilm_dir), cache) == "sha256-full:bb4391787ac1af15aee5b8ae0889ddb1"
    pooling = ("sentence_transformers.models.Pooling", "1_Pooling")
    _write(model / "modules.json", _modules(TRANSFORMER, pooling, ("sentence_transformers.models.Dense", "2_Dense")))
    _write(model / "2_Dense" / "config.json", {"in_features": 384, "out_features": 8})
    save_file(
        {"linear.weight": torch.zeros(8, 384), "linear.bias": torch.zeros(8)}, model / "2_Dense" / "model.safetensors"
    )
    before = model_fingerprint(model, cache)
    save_file(
        {"linear.weight": torch.ones(8, 384), "linear.bias": torch.zeros(8)}, model / "2_Dense" / "model.safetensors"
    )
    assert model_fingerprint(model, cache) != before  # another head, another model


def test_vector_keys_of_tables_of_before_hold(minilm_dir):
    """Recording include_prompt and dense only where they differ from what their absence meant keeps
    every stored row's key: an upsert after the upgrade re-embeds nothing."""
    from helpers.settled import settled
    from pipelines.lineage import make_lineage

    config = settled(load_config())
    made = make_lineage(config, fingerprint="f", hidden_size=384, max_tokens=256, dimension=384).to_dict()
    assert "include_prompt" not in made["model"] and "dense" not in made["model"]
    dense = config.model_copy(update={"model": config.model.model_copy(update={"dense": True})})
    with_head = make_lineage(dense, fingerprint="f", hidden_size=384, max_tokens=256, dimension=384)
    assert vector_key(with_head, config) != vector_key(made, config)


def test_check_model_flags_a_cosine_below_the_bound(minilm_dir):
    from pipelines.embed.check_model import MIN_COSINE, ModelCheck

    resolved = resolve_model_settings(ModelConfig(path=str(minilm_dir)), minilm_dir)
    same = ModelCheck("m", resolved, 384, ["a", "b"], "ref", {"document": [1.0, 0.99999], "query": [1.0, 1.0]})
    assert same.ok and "the same vectors" in same.format()
    off = ModelCheck("m", resolved, 384, ["a", "b"], "ref", {"document": [1.0, 0.93], "query": [1.0, 1.0]})
    assert not off.ok and off.worst == 0.93 < MIN_COSINE
    assert "  BAD document cosine 0.930000  b" in off.format() and "DIFFERENT vectors" in off.format()
