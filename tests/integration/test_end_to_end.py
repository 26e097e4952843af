"""Parquet -> Ray Data -> packaged MiniLM -> LanceDB with IVF-PQ, then queries: all real parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.lance.metadata import lineage_in, read_lineage
from connectors.lance.table import SinkError
from pipelines.config import load_config
from pipelines.lineage import LineageMismatchError
from pipelines.run.runner import run_index
from pipelines.search.searcher import Searcher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/integration/ -> repo root


def _config(corpus_dir, db, **extra):
    overrides = [
        f"source.path={corpus_dir}",
        "source.metadata_columns=[title, length_chars]",
        f"sink.uri={db}",
        "sink.table=docs",
        "compute.block_rows=64",
        "sink.rows_per_fragment=100",
        "index.min_rows=256",  # the tests read the index of this 300-row table (auto: exact search below 2,605)
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(overrides=overrides)


@pytest.fixture(scope="module")
def indexed(ray_cluster, corpus_dir, tmp_path_factory):
    db = str(tmp_path_factory.mktemp("db"))
    summary = run_index(_config(corpus_dir, db))
    import lancedb

    return summary, db, lancedb.connect(db).open_table("docs")


def _dtype(table) -> str:
    return lineage_in(table.schema, "the table")["model"]["dtype"]


def _input_ids(corpus_dir):
    return pq.read_table(corpus_dir).column("id").to_pylist()


def test_every_valid_id_exactly_once(indexed, corpus_dir):
    summary, _, table = indexed
    ids = table.to_arrow().column("id").to_pylist()
    expected = [i for i in _input_ids(corpus_dir) if not i.startswith("bad-")]
    assert len(ids) == len(set(ids)) == 300
    assert set(ids) == set(expected)
    assert summary.rows_read == 303 and summary.rows_written == 300 and summary.table_rows == 300


def test_summary_times_checkpoints_dedup_and_the_index_step(indexed):
    summary, _, _ = indexed
    timings = summary.checkpoint_timings  # a create run stages: run-log records, no table commit
    assert len(timings) == summary.checkpoints >= 1
    assert [t["rows"] for t in timings] == sorted(t["rows"] for t in timings) and timings[-1]["rows"] == 303
    assert all(t["commit_s"] == 0 and t["runlog_s"] > 0 for t in timings)
    at = [t["at_s"] for t in timings]  # when, in the stream: the rate between checkpoints
    assert at == sorted(at) and 0 < at[-1] <= summary.embed_seconds + 0.1
    assert summary.dedup_seconds > 0 and summary.index_seconds >= summary.index["build_seconds"] > 0
    assert json.loads(summary.to_json())["checkpoint_timings"] == timings


def test_rejects_are_counted_and_kept_with_reason(indexed):
    summary, db, _ = indexed
    assert dict(summary.rejected) == {"null_text": 1, "empty_text": 2}
    assert summary.rows_read == summary.rows_written + summary.rows_rejected
    import lancedb

    rejects = lancedb.connect(db).open_table("docs_rejects").to_arrow().to_pylist()
    by_id = {r["id"]: r for r in rejects}
    assert set(by_id) == {"bad-null", "bad-empty", "bad-space"}
    assert {r["run_id"] for r in rejects} == {summary.run_id}
    assert by_id["bad-null"]["reason"] == "null_text"
    assert by_id["bad-space"]["reason"] == "empty_text"
    assert by_id["bad-space"]["file"].endswith("part-1.parquet")


def test_vectors_have_dimension_and_unit_norm(indexed):
    _, _, table = indexed
    data = table.to_arrow()
    assert str(data.schema.field("vector").type) == "fixed_size_list<item: float>[384]"
    vectors = np.stack(data.column("vector").to_numpy(zero_copy_only=False))
    assert vectors.shape == (300, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert set(data.column_names) == {
        "id",
        "text",
        "title",
        "length_chars",
        "vector",
        "content_hash",
        "source_file",
        "run_id",
    }


def test_vectors_match_sentence_transformers(indexed, minilm_dir):
    from sentence_transformers import SentenceTransformer

    _, _, table = indexed
    rows = table.to_arrow().slice(0, 16)
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    expected = model.encode(rows.column("text").to_pylist(), normalize_embeddings=True)
    got = np.stack(rows.column("vector").to_numpy(zero_copy_only=False))
    cosine = (expected * got).sum(axis=1)
    # model.dtype auto: float32 here unless this CPU has native bf16 (then >= 0.999, precision.py)
    assert cosine.min() >= (0.9999 if _dtype(table) == "float32" else 0.999)


def test_ivf_rq_index_with_derived_parameters(indexed):
    summary, _, table = indexed
    assert summary.index["type"] == "ivf_rq"
    indices = {i.columns[0]: i.index_type for i in table.list_indices()}
    assert indices == {"vector": "IvfRq", "id": "BTree", "text": "FTS"}  # index.fts: the text column too
    assert summary.index["num_partitions"] == 1 and summary.index["num_bits"] == 4
    assert "ivf_rq metric=cosine partitions=1 bits=4 built in" in summary.format()


def test_lineage_is_stored_with_the_table(indexed):
    summary, db, _ = indexed
    lineage = read_lineage(db, "docs")
    assert lineage["model"]["path"] == "packaged:all-MiniLM-L6-v2"
    assert lineage["model"]["pooling"] == "mean" and lineage["model"]["max_tokens"] == 256
    assert lineage["model"]["fingerprint"].startswith("sha256-full:")
    assert (lineage["dimension"], lineage["metric"], lineage["normalize"]) == (384, "cosine", True)
    # model.dtype auto, resolved before any work: the table records what the encoder ran in
    flags = open("/proc/cpuinfo").read()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert lineage["model"]["dtype"] == summary.dtype == ("bfloat16" if native else "float32")
    assert (
        f"dtype        {summary.dtype} (auto: {'native' if native else 'no native'} bf16 on this CPU"
        in summary.format()
    )
    assert lineage["counts"]["written"] == 300 and lineage["counts"]["rejected"] == {"null_text": 1, "empty_text": 2}
    assert lineage["index"]["num_partitions"] == 1
    tuning = lineage["tuning"]  # recall-targeted defaults, measured on pseudo-queries
    assert lineage["query_defaults"] == {"nprobes": 1, "refine_factor": tuning["refine_factor"]}
    assert tuning["reached"] and tuning["recall"] >= tuning["target_recall"] == 0.95
    assert tuning["query_source"] == "pseudo-queries"
    assert summary.tuning["recall"] == tuning["recall"]
    assert tuning["recall"] >= tuning["recall_low"] >= 0.95
    assert (
        f"tuning       recall@10 {tuning['recall']:.3f}, 95% lower bound {tuning['recall_low']:.3f} vs exact "
        "search (target 0.95, reached)"
    ) in summary.format()


def test_query_with_a_documents_own_text_returns_it_first(indexed, sample_table):
    _, db, _ = indexed
    searcher = Searcher.open(db, "docs")
    for row in sample_table.slice(0, 300).to_pylist()[::37]:
        hits = searcher.search(row["text"], k=3)
        assert hits.column("id")[0].as_py() == row["id"]
        assert hits.column("score")[0].as_py() > 0.99


def test_filters_apply_to_metadata(indexed):
    _, db, _ = indexed
    hits = Searcher.open(db, "docs").search("a famous scientist", k=5, where="length_chars > 600")
    assert hits.num_rows == 5
    assert all(n > 600 for n in hits.column("length_chars").to_pylist())
    scores = hits.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True)


def test_query_with_another_model_fails(indexed, tiny_bert_dir):
    _, db, _ = indexed
    with pytest.raises(LineageMismatchError, match="not the model that made this table"):
        Searcher.open(db, "docs", model_path=str(tiny_bert_dir))


def test_query_with_another_dimension_fails(indexed):
    _, db, _ = indexed
    with pytest.raises(LineageMismatchError, match="dimension 128"):
        Searcher.open(db, "docs", dimension=128)
    with pytest.raises(LineageMismatchError, match="384-dimensional"):
        Searcher.open(db, "docs").search(np.ones(128, dtype=np.float32) / np.sqrt(128))


def test_append_with_another_dimension_is_refused_before_work(indexed, corpus_dir):
    _, db, _ = indexed
    with pytest.raises(LineageMismatchError, match="dimension: table has 384, this run's config has 128"):
        run_index(_config(corpus_dir, db, **{"sink.mode": "append", "embed.dimension": 128}))


def test_create_mode_refuses_existing_table(indexed, corpus_dir):
    _, db, _ = indexed
    with pytest.raises(SinkError, match="already exists"):
        run_index(_config(corpus_dir, db, **{"sink.mode": "create"}))


@pytest.mark.slow  # CI: test_matryoshka_derive.py compares a run at 128 with the 384 one cut
def test_matryoshka_table_equals_truncated_full_vectors(indexed, corpus_dir, tmp_path):
    _, _, full_table = indexed
    db = str(tmp_path / "db128")
    summary = run_index(_config(corpus_dir, db, **{"embed.dimension": 128, "index.type": "none"}))
    assert summary.index["type"] == "none"
    import lancedb

    small = lancedb.connect(db).open_table("docs").to_arrow()
    full = full_table.to_arrow()
    full_by_id = dict(zip(full.column("id").to_pylist(), full.column("vector").to_pylist()))
    got = np.array(small.column("vector").to_pylist(), dtype=np.float32)
    base = np.array([full_by_id[i] for i in small.column("id").to_pylist()], dtype=np.float32)[:, :128]
    expected = base / np.linalg.norm(base, axis=1, keepdims=True)
    assert got.shape == (300, 128)
    assert np.allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="larger than the model's 384"):
        run_index(_config(corpus_dir, db, **{"embed.dimension": 512}))


@pytest.mark.slow  # CI: the tuning unit tests and test_evaluate's tuned tables
def test_tuning_on_real_queries_from_a_file(ray_cluster, corpus_dir, sample_table, tmp_path):
    from connectors.lance.index import search_batch
    from pipelines.vector_index.tuning import knn_recall

    texts = [f"what is {t}" for t in sample_table.slice(0, 300).column("title").to_pylist()[:40]]
    queries = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"text": texts + ["", None, "   "]}), queries)  # blanks are skipped
    db = str(tmp_path / "db")
    summary = run_index(
        _config(corpus_dir, db, **{"index.tuning_queries_path": str(queries), "index.tuning_queries": 30})
    )
    tuning = summary.tuning
    assert tuning["query_source"] == f"queries from {queries}" and tuning["queries"] == 30
    assert tuning["reached"] and tuning["recall"] >= 0.95
    assert read_lineage(db, "docs")["tuning"]["query_source"] == tuning["query_source"]

    # The recorded recall is what these queries get at the stored defaults, measured here apart.
    from connectors.storage import Storage
    from pipelines.vector_index.step import read_tuning_queries

    searcher = Searcher.open(db, "docs")
    vectors = searcher.embed_queries(read_tuning_queries(str(queries), 30, Storage.resolve()))
    exact = search_batch(searcher.table, vectors, 10, metric="cosine", id_column="id", exact=True)
    found = search_batch(
        searcher.table,
        vectors,
        10,
        metric="cosine",
        id_column="id",
        nprobes=tuning["nprobes"],
        refine_factor=tuning["refine_factor"],
    )
    assert knn_recall(found, exact, 10) == pytest.approx(tuning["recall"], abs=1e-4)


def test_tuning_query_file_without_text_column_fails_before_work(ray_cluster, corpus_dir, tmp_path):
    queries = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query": ["a", "b"]}), queries)
    db = tmp_path / "db"
    with pytest.raises(
        ValueError,
        match=r"index.tuning_queries_path=.*queries.parquet has no 'text' column "
        r"\(columns: query\)",
    ):
        run_index(_config(corpus_dir, str(db), **{"index.tuning_queries_path": str(queries)}))
    assert not db.exists()  # nothing was written
    with pytest.raises(ValueError, match="index.tuning_queries_path=.*missing.parquet: cannot read it"):
        run_index(_config(corpus_dir, str(db), **{"index.tuning_queries_path": str(tmp_path / "missing.parquet")}))


def _run(args, **env):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=full_env, timeout=600
    )


def test_cli_config_error_names_key_and_exits_nonzero():
    result = _run(["jobs.index", "--set", "compute.actorz=2"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: invalid config: compute.actorz: unknown key"]


def test_cli_index_then_query_json(ray_cluster, sample_table, tmp_path):
    corpus = tmp_path / "small.parquet"
    pq.write_table(sample_table.slice(300, 40), corpus)
    db = tmp_path / "db"
    result = _run(
        [
            "jobs.index",
            "--set",
            f"source.path={corpus}",
            "--set",
            f"sink.uri={db}",
            "--summary-json",
            str(tmp_path / "summary.json"),
        ],
        RAY_ADDRESS=ray_cluster.address_info["address"],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "embedded     40" in result.stdout
    # The log a user reads: a start line, a line per checkpoint, and not Ray Data's operator dump.
    log = [line for line in result.stderr.splitlines() if line.startswith("[embedpipe] ")]
    assert "1 files (40 rows) -> table 'documents'" in log[0] and "resume it with --set run.id=" in log[0], log
    assert any(line.startswith("[embedpipe] checkpoint 1: 40 / 40 rows (100%), ") for line in log), log
    assert "logging_progress" not in result.stderr and "Tasks: " not in result.stderr
    # Nor a notice the user can do nothing about (pipelines/run/quiet.py): Ray's token authentication
    # being on, Lance's and LanceDB's fork warnings for Ray's own fork+exec.
    assert "Token authentication is enabled" not in result.stderr and "not fork-safe" not in result.stderr
    assert "lancedb fork support" not in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows_written"] == 40 and summary["index"]["type"] == "none"

    queries = tmp_path / "q.jsonl"
    target = sample_table.slice(305, 1).to_pylist()[0]
    queries.write_text(
        json.dumps({"id": "q1", "text": target["text"]})
        + "\n"
        + json.dumps({"id": 7, "text": "rivers and mountains"})
        + "\n"
    )
    result = _run(
        ["jobs.query", "--uri", str(db), "--table", "documents", "-k", "3", "--json", "--queries", str(queries)]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(h["query_id"], h["rank"]) for h in lines] == [("q1", 1), ("q1", 2), ("q1", 3), (7, 1), (7, 2), (7, 3)]
    assert lines[0]["id"] == target["id"] and lines[0]["query"] == target["text"]
    assert set(lines[0]) == {"query_id", "query", "rank", "id", "score"}
    assert "not fork-safe" not in result.stderr

    # The one command (pyproject's [project.scripts]) runs the same job.
    embedpipe = os.path.join(os.path.dirname(sys.executable), "embedpipe")
    same = subprocess.run(
        [embedpipe, "query", "--uri", str(db), "--table", "documents", "-k", "3", "--json", "--queries", str(queries)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert same.returncode == 0, same.stderr[-2000:]
    assert [json.loads(line) for line in same.stdout.splitlines()] == lines

    # The project's own evaluation queries (BEIR's "_id") are a queries file too. This and the refusals
    # below run the query job's main in this process (helpers/job_main.py): the same output and exit
    # code; the two commands above are the ones run as processes.
    from helpers.job_main import run_job_main
    from jobs.query import main as query_main

    queries_file = os.path.join(ROOT, "data", "eval", "wiki_desc", "queries.jsonl")
    beir = run_job_main(
        query_main, ["--uri", db, "--table", "documents", "-k", "1", "--json", "--queries", queries_file]
    )
    assert beir.returncode == 0, beir.stderr[-2000:]
    assert [json.loads(line)["query_id"] for line in beir.stdout.splitlines()][:2] == ["q000", "q001"]

    missing = run_job_main(query_main, ["--uri", db, "--table", "nope", "hello"])
    assert missing.returncode == 2 and "no table 'nope'" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "q1", "text": "fine"}) + "\n" + json.dumps({"id": "q2", "query": "x"}) + "\n")
    refused = run_job_main(query_main, ["--uri", db, "--table", "documents", "--queries", bad])
    assert refused.returncode == 2 and "bad.jsonl:2: expected a JSON object with a string 'text'" in refused.stderr


@pytest.mark.slow  # CI: tests/unit/test_precision.py's rule for append/upsert
def test_an_upsert_keeps_the_dtype_the_table_was_embedded_in(ray_cluster, corpus_dir, tiny_bert_dir, tmp_path):
    """model.dtype auto on a table embedded in another dtype: the rows' dtype wins (auto on other hardware
    must not make every content hash stale); a dtype set explicitly is used as set."""
    from pipelines.run.preflight import preflight

    db = str(tmp_path)
    for dtype in ("bfloat16", "float32"):
        table = {"sink.table": f"t_{dtype}", "model.path": tiny_bert_dir, "index.min_rows": 10**6}
        run_index(_config(corpus_dir, db, **table, **{"model.dtype": dtype}))
        plan = preflight(_config(corpus_dir, db, **table, **{"sink.mode": "upsert"}))
        assert plan.config.model.dtype == plan.lineage.model.dtype == dtype
        assert plan.dtype_reason == f"auto: the dtype table 't_{dtype}' was embedded in"
    other = preflight(_config(corpus_dir, db, **table, **{"sink.mode": "upsert", "model.dtype": "bfloat16"}))
    assert (other.config.model.dtype, other.dtype_reason) == ("bfloat16", "model.dtype set")
