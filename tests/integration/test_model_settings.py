"""A run settles the model's ``auto`` settings from its own files, says where each came from, records the
chain, and on append follows the table's lineage rather than the files (pipelines/run/model_plan.py).

The model: a tiny BERT with CLS pooling, a Dense head (32 -> 16, Tanh), Normalize and e5-style prompts,
saved by sentence-transformers. The vectors themselves are compared with sentence-transformers in
tests/integration/test_model_conformance.py; here, what the runs decide and record.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connectors.lance.metadata import read_lineage
from pipelines.config import load_config
from pipelines.lineage import LineageMismatchError
from pipelines.run.runner import run_index


@pytest.fixture(scope="module")
def dense_model(tmp_path_factory, tiny_bert_dir) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    torch.manual_seed(0)
    modules = [Transformer(str(tiny_bert_dir)), Pooling(32, pooling_mode="cls"), Dense(32, 16), Normalize()]
    prompts = {"query": "query: ", "passage": "passage: "}  # saved with an empty "document" placeholder too
    out = tmp_path_factory.mktemp("dense-model")
    SentenceTransformer(modules=modules, prompts=prompts, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="module")
def docs(tmp_path_factory, sample_table) -> Path:
    path = tmp_path_factory.mktemp("docs") / "docs.parquet"
    pq.write_table(sample_table.slice(0, 12).select(["id", "text"]), path)
    return path


def _config(model, docs, db, mode, *extra):
    return load_config(
        overrides=[
            f"model.path={model}",
            "model.dtype=float32",
            f"source.path={docs}",
            f"sink.uri={db}",
            "sink.table=docs",
            f"sink.mode={mode}",
            "index.type=none",
            *extra,
        ]
    )


def test_a_new_table_takes_the_models_own_chain_and_records_it(ray_cluster, dense_model, docs, tmp_path):
    summary = run_index(_config(dense_model, docs, tmp_path / "db", "overwrite"))
    lines = "\n".join(summary.model)
    assert "Transformer -> Pooling(cls) -> Dense(32->16, Tanh) -> Normalize: 16 dims, 16 stored" in lines
    assert "pooling cls, include_prompt true (model's 1_Pooling/config.json)" in lines
    assert "dense true (model's modules.json: 1 Dense layer)" in lines
    assert "document_prompt 'passage: ' (model's config_sentence_transformers.json prompts['passage'])" in lines
    assert "index.metric cosine (model's config_sentence_transformers.json similarity_fn_name)" in lines
    assert "model        Transformer -> Pooling(cls)" in summary.format()
    lineage = read_lineage(str(tmp_path / "db"), "docs")
    assert lineage["dimension"] == 16
    model = lineage["model"]
    assert (model["pooling"], model["dense"], model["query_prompt"], model["document_prompt"]) == (
        "cls",
        True,
        "query: ",
        "passage: ",
    )
    assert model["modules"] == ["Transformer", "Pooling(cls)", "Dense(32->16, Tanh)"]


def test_an_append_follows_the_tables_lineage_not_the_models_files(ray_cluster, dense_model, docs, tmp_path):
    db = tmp_path / "db"
    # A table as a run of before these files were read made it: mean pooling, no head, no prompts.
    old_way = ["model.pooling=mean", "model.dense=false", "model.query_prompt=", "model.document_prompt="]
    run_index(_config(dense_model, docs, db, "overwrite", *old_way))
    assert read_lineage(str(db), "docs")["dimension"] == 32

    more = tmp_path / "more.parquet"
    table = pq.read_table(docs)
    pq.write_table(table.set_column(0, "id", [[f"x{i}" for i in range(table.num_rows)]]), more)
    summary = run_index(_config(dense_model, more, db, "append"))
    lines = "\n".join(summary.model)
    followed = "pooling mean, include_prompt true, dense false, query_prompt '', document_prompt ''"
    followed += " (table 'docs''s lineage)"
    assert followed in lines
    assert summary.rows_written == 12 and read_lineage(str(db), "docs")["dimension"] == 32

    with pytest.raises(LineageMismatchError, match="model.dense: table has False, this run's config has True"):
        run_index(_config(dense_model, more, db, "append", "model.dense=true"))
    shutil.rmtree(db)
