"""The vLLM backend against the hf backend on the same models and inputs (CPU build of vLLM).

Run by ``scripts/test_vllm.sh`` in ``.venv-vllm``; skipped where vLLM is not installed. Engines run
in-process with a small memory reservation so that they start in about 30 s on two cores.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("vllm")

from connectors import columns as C  # noqa: E402
from connectors.lance.metadata import read_lineage  # noqa: E402
from helpers.settled import settled  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.embed.hf_encoder import HFEncoder  # noqa: E402
from pipelines.embed.postprocess import postprocess  # noqa: E402
from pipelines.embed.vllm_encoder import VLLMEncoder, matryoshka_dimensions  # noqa: E402
from pipelines.run.runner import run_index  # noqa: E402
from pipelines.run.stages.encode import EncodeStage  # noqa: E402
from pipelines.run.stages.tokenize import TokenizeStage  # noqa: E402
from pipelines.run.stages.validate import ValidateStage  # noqa: E402
from pipelines.search.searcher import Searcher  # noqa: E402

# What a CPU test machine can give an engine: ~5% of RAM for its KV cache, no compile step.
VLLM_CPU = ["model.vllm.in_process=true", "model.vllm.enforce_eager=true", "model.vllm.gpu_memory_utilization=0.1"]
QUERY_PROMPT = "Instruct: Given a question, retrieve the Wikipedia article that answers it\nQuery: "
MIN_COSINE = 0.999


def _config(backend, *overrides):
    # float32 on both backends: they are compared to each other (auto picks bf16 on some CPUs)
    backend_set = [f"model.backend={backend}", "model.dtype=float32", *(VLLM_CPU if backend == "vllm" else [])]
    return settled(load_config(overrides=[*backend_set, *overrides]))  # as a run's preflight settles it


def _batch(sample_table, n=24):
    """Real texts of many lengths, with rows the validate stage rejects in between."""
    rows = sample_table.slice(0, n).select(["id", "text"]).to_pylist()
    rows.insert(3, {"id": "bad-empty", "text": "  "})
    rows.insert(10, {"id": "bad-null", "text": None})
    rows[5]["text"] = rows[5]["text"] * 8  # longer than any token limit: truncated
    return pa.Table.from_pylist(rows)


def _encode_both(config_for, batch, max_tokens, dimension):
    """The same validated, tokenized batch through the hf and the vllm encode stages."""
    out = {}
    for backend in ("hf", "vllm"):
        config = config_for(backend)
        m = config.model
        tokenized = TokenizeStage(m, "id", "text", max_tokens, m.document_prompt)(ValidateStage("id", "text")(batch))
        stage = EncodeStage(m, dimension=dimension, normalize=True, batch_tokens=2048, max_tokens=max_tokens)
        try:
            out[backend] = (tokenized, stage(tokenized))
        finally:
            if backend == "vllm":
                stage.encoder.close()
    return out


def _vectors(table):
    rows = table.column(C.VECTOR).to_pylist()
    return np.array([v is not None for v in rows]), np.array([v for v in rows if v is not None], dtype=np.float32)


def _assert_same_output(results, dimension):
    (tok_hf, hf), (tok_vl, vl) = results["hf"], results["vllm"]
    assert tok_hf.column(C.INPUT_IDS).equals(tok_vl.column(C.INPUT_IDS))  # identical inputs
    assert hf.schema.equals(vl.schema)
    assert hf.schema.field(C.VECTOR).type == pa.list_(pa.float32(), dimension)
    for name in hf.column_names:
        if name != C.VECTOR:
            assert hf.column(name).equals(vl.column(name)), name  # ids, order, rejects, token counts
    valid_hf, a = _vectors(hf)
    valid_vl, b = _vectors(vl)
    assert (valid_hf == valid_vl).all() and valid_hf.sum() == len(a) == len(b)
    cosine = (a * b).sum(axis=1)
    assert cosine.min() >= MIN_COSINE, cosine.min()
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # Agreement means something only if different texts are far apart.
    cross = a @ b.T
    assert cross[~np.eye(len(a), dtype=bool)].max() < 0.99
    return a, b


def test_bert_style_stage_output_matches_hf(sample_table):
    batch = _batch(sample_table)
    results = _encode_both(lambda b: _config(b), batch, max_tokens=256, dimension=384)
    _assert_same_output(results, 384)
    out = results["vllm"][1]
    assert out.column("id").to_pylist() == batch.column("id").to_pylist()
    assert out.column(C.REJECT).to_pylist()[3] == "empty_text" and out.column(C.VECTOR)[3].as_py() is None
    assert out.column(C.TRUNCATED)[5].as_py() is True and out.column(C.N_TOKENS)[5].as_py() == 256


def test_decoder_with_eos_and_query_prompt_matches_hf(sample_table, tiny_llama_dir):
    batch = _batch(sample_table)

    def config_for(backend):
        return _config(backend, f"model.path={tiny_llama_dir}", "model.pooling=last")

    results = _encode_both(config_for, batch, max_tokens=128, dimension=64)
    _assert_same_output(results, 64)
    ids = [x for x in results["vllm"][0].column(C.INPUT_IDS).to_pylist() if x]
    assert {x[-1] for x in ids} == {1} and max(map(len, ids)) == 128  # EOS (id 1) last, also when cut

    # Queries with an instruction prompt: the same token ids into both encoders.
    from pipelines.embed.tokenizer import eos_to_append, load_tokenizer, tokenize_texts

    model = config_for("vllm").model
    tokenizer = load_tokenizer(model.path, None, "left")
    queries = ["Which planet is the largest?", "Who painted the Mona Lisa?", "How do vaccines work?"]
    q_ids, _ = tokenize_texts(
        tokenizer, [QUERY_PROMPT + q for q in queries], 128, eos_to_append(tokenizer, "auto", "last")
    )
    hf = postprocess(HFEncoder(config_for("hf").model).embed(q_ids, 2048), 64)
    engine = VLLMEncoder(model, dimension=64, normalize=True, max_tokens=128)
    try:
        vl = postprocess(engine.embed(q_ids), 64)
    finally:
        engine.close()
    assert (hf * vl).sum(axis=1).min() >= MIN_COSINE


def test_matryoshka_through_vllm_dimensions_where_the_model_declares_it(sample_table, tiny_qwen3_dir):
    assert matryoshka_dimensions(tiny_qwen3_dir) == []  # is_matryoshka: any dimension
    model = load_config(
        overrides=[
            *VLLM_CPU,
            "model.backend=vllm",
            "model.dtype=float32",
            f"model.path={tiny_qwen3_dir}",
            "model.pooling=last",
        ]
    ).model
    from pipelines.embed.tokenizer import eos_to_append, load_tokenizer, tokenize_texts

    tokenizer = load_tokenizer(model.path, None, "left")
    assert eos_to_append(tokenizer, "auto", "last") is None  # this tokenizer ends texts with EOS itself
    ids, _ = tokenize_texts(tokenizer, sample_table.column("text").to_pylist()[:12], 128)
    engine = VLLMEncoder(model, dimension=32, normalize=True, max_tokens=128)
    try:
        assert engine.native_dimensions
        got = engine.embed(ids)
        assert got.shape == (12, 32)  # vLLM truncated (PoolingParams.dimensions) and normalised
        stored = postprocess(got, 32)
    finally:
        engine.close()
    hf_model = model.model_copy(update={"backend": "hf"})
    expected = postprocess(HFEncoder(hf_model).embed(ids, 2048), 32)  # truncate, re-normalise
    assert (stored * expected).sum(axis=1).min() >= MIN_COSINE
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)


def test_matryoshka_by_truncation_where_the_model_does_not_declare_it(sample_table, minilm_dir):
    assert matryoshka_dimensions(minilm_dir) is None
    model = _config("vllm").model
    from pipelines.embed.tokenizer import load_tokenizer, tokenize_texts

    ids, _ = tokenize_texts(
        load_tokenizer(model.path, None, "right"), sample_table.column("text").to_pylist()[:12], 256
    )
    engine = VLLMEncoder(model, dimension=128, normalize=True, max_tokens=256)
    try:
        assert not engine.native_dimensions
        full = engine.embed(ids)
    finally:
        engine.close()
    assert full.shape == (12, 384)
    got = postprocess(full, 128)
    expected = postprocess(HFEncoder(_config("hf").model).embed(ids, 2048), 128)
    assert got.shape == (12, 128) and (got * expected).sum(axis=1).min() >= MIN_COSINE


def test_index_job_with_vllm_matches_hf(ray_cluster, sample_table, tmp_path):
    """The whole job in Ray actors: same table, rows, rejects, counts and lineage as hf."""
    docs = sample_table.slice(0, 60).select(["id", "title", "text"])
    docs = docs.cast(pa.schema([f.with_nullable(True) for f in docs.schema]))
    bad = pa.table({"id": ["bad-null", "bad-empty"], "title": ["n", "e"], "text": [None, ""]}, schema=docs.schema)
    pq.write_table(pa.concat_tables([docs, bad]), tmp_path / "docs.parquet")

    def run(backend):
        db = str(tmp_path / backend)
        summary = run_index(
            _config(
                backend,
                f"source.path={tmp_path / 'docs.parquet'}",
                f"sink.uri={db}",
                "sink.table=docs",
                "source.metadata_columns=[title]",
                "index.type=none",
                "compute.block_rows=32",
            )
        )
        import lancedb

        return summary, db, lancedb.connect(db).open_table("docs").to_arrow()

    hf_summary, hf_db, hf_table = run("hf")
    vl_summary, vl_db, vl_table = run("vllm")

    assert vl_table.schema.remove_metadata().equals(hf_table.schema.remove_metadata())
    for key in ("rows_read", "rows_written", "rejected", "tokens", "truncated", "table_rows"):
        assert getattr(vl_summary, key) == getattr(hf_summary, key), key
    assert dict(vl_summary.rejected) == {"null_text": 1, "empty_text": 1}

    hf_by_id = dict(zip(hf_table.column("id").to_pylist(), hf_table.column("vector").to_pylist()))
    ids = vl_table.column("id").to_pylist()
    assert sorted(ids) == sorted(hf_by_id) and len(ids) == 60
    a = np.array([hf_by_id[i] for i in ids], dtype=np.float32)
    b = np.array(vl_table.column("vector").to_pylist(), dtype=np.float32)
    assert (a * b).sum(axis=1).min() >= MIN_COSINE
    assert not np.array_equal(a, b)  # vLLM's kernels really ran in the actors: close, not bit-equal

    hf_lineage, vl_lineage = read_lineage(hf_db, "docs"), read_lineage(vl_db, "docs")
    assert vl_lineage["model"].pop("backend") == "vllm" and hf_lineage["model"].pop("backend") == "hf"
    for lineage in (hf_lineage, vl_lineage):
        lineage.pop("created_at")
        lineage["index"].pop("build_seconds", None)
        lineage["index"]["fts"].pop("seconds")  # the full-text index's build time
        lineage["counts"].pop("run_id")  # each run has its own id
        # Query defaults are tuned by measuring recall on each table's own (cosine >= 0.999) vectors.
        lineage.pop("tuning", None), lineage.pop("query_defaults", None)
        lineage["index"].pop("nprobes", None), lineage["index"].pop("refine_factor", None)
    assert vl_lineage == hf_lineage

    # A vLLM-made table is queried like any other (queries go through the hf encoder).
    row = docs.slice(7, 1).to_pylist()[0]
    hits = Searcher.open(vl_db, "docs").search(row["text"], k=3)
    assert hits.column("id")[0].as_py() == row["id"] and hits.column("score")[0].as_py() > 0.99
