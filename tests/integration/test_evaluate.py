"""jobs.evaluate on the shipped BEIR-layout set, checked against numpy and sentence-transformers.

One run of the command line (two Matryoshka dimensions, IVF-PQ from the config plus the 4-bit IVF-RQ
index, text, vector and hybrid search), in this process, feeds every test; the checks recompute its
numbers independently from the tables it leaves. The corpus is embedded once, at 384 dimensions; the
128 table is derived from it (its equality with a separate run at 128 is
tests/integration/test_matryoshka_derive.py's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from connectors.beir import load_beir
from connectors.lance.metadata import read_lineage
from helpers.job_main import run_job_main
from jobs.evaluate import main as evaluate_main
from jobs.query import main as query_main

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "data" / "eval" / "wiki_desc"
DIMS = (384, 128)
MODES = ("text", "vector", "hybrid")  # --modes' default: all three


def _run(args):
    return subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )


@pytest.fixture(scope="module")
def evaluated(ray_cluster, tmp_path_factory):
    """The evaluation's command line, run in this process on the session's Ray (helpers/job_main.py):
    the same output and exit code as its process, without a Python start and a Ray job of its own."""
    out = tmp_path_factory.mktemp("eval")
    result = run_job_main(
        evaluate_main,
        [
            "--dataset",
            DATASET,
            "--dimensions",
            ",".join(map(str, DIMS)),
            "--index-types",
            "ivf_rq",
            "--out",
            out,
            "--set",
            "compute.block_rows=128",
            "--set",
            "model.dtype=float32",  # compared with sentence-transformers in float32 to 1e-4
            "--set",
            "index.type=ivf_pq",  # the config's type first, then --index-types: ivf_rq is built last
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def dataset():
    return load_beir(DATASET)


@pytest.fixture(scope="module")
def st_model(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def _table(out: Path, dim: int):
    import lancedb

    return lancedb.connect(str(out / "lancedb")).open_table(f"wiki_desc_d{dim}")


def _numpy_metrics(order: np.ndarray, doc_ids: list, qids: list, qrels: dict) -> dict:
    """nDCG@10, Recall@10/100, MRR@10 from a (queries x docs) ranking, vectorised, straight from the definitions.

    ``order`` may name column ``len(doc_ids)``: no document (a ranking shorter than the others)."""
    column = {d: i for i, d in enumerate(doc_ids)}
    rel = np.zeros((len(qids), len(doc_ids) + 1))
    for qi, q in enumerate(qids):
        for d, r in qrels[q].items():
            rel[qi, column[d]] = r
    ranked = np.take_along_axis(rel, order, axis=1)
    discount = 1 / np.log2(np.arange(2, 12))
    dcg = (ranked[:, :10] * discount).sum(1)
    idcg = (-np.sort(-rel, axis=1)[:, :10] * discount).sum(1)
    hit = ranked > 0
    first = np.where(hit[:, :10].any(1), 1 / (hit[:, :10].argmax(1) + 1), 0.0)
    n_rel = (rel > 0).sum(1)
    return {
        "ndcg@10": float((dcg / idcg).mean()),
        "recall@10": float((hit[:, :10].sum(1) / n_rel).mean()),
        "recall@100": float((hit[:, :100].sum(1) / n_rel).mean()),
        "mrr@10": float(first.mean()),
    }


def _rows(report, dim=None, search=None):
    return [
        r
        for r in report["results"]
        if (dim is None or r["dimension"] == dim) and (search is None or r["search"] == search)
    ]


def test_cli_prints_the_table_and_writes_json_and_plot(evaluated):
    result, out, report = evaluated
    assert [(r["dimension"], r["search"]) for r in report["results"]] == [
        (384, "exact"),
        (384, "ivf_pq"),
        (384, "ivf_rq"),
        (128, "exact"),
        (128, "ivf_pq"),
        (128, "ivf_rq"),
    ]
    table = (out / "results.md").read_text()
    assert table in result.stdout
    searches, modes = table.split("\nSearch modes")  # the searches by index, then the modes side by side
    rows = [line for line in searches.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 6 and rows[0].startswith("| dim | search | bytes/vector | nDCG@10")
    assert "| 128 | IVF-RQ 4-bit | 64 |" in table
    rows = [line for line in modes.splitlines() if line.startswith("| ")]
    assert rows[0] == (
        "| dim | text nDCG@10 | vector nDCG@10 | hybrid nDCG@10 | text Recall@100 | vector Recall@100 | "
        "hybrid Recall@100 |"
    )
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 384", "| 128"]
    assert [(r["dimension"], r["mode"]) for r in report["modes"]] == [(d, m) for d in DIMS for m in MODES]
    png = (out / "quality_vs_bytes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert report["dataset"] == {
        "path": str(DATASET),
        "name": "wiki_desc",
        "split": "test",
        "documents": 400,
        "queries": 100,
        "judgments": 100,
    }
    # One indexing run (its summary), at the widest dimension; the other table derived from it.
    assert result.stderr.count("tuning       recall@10") == 1
    assert "table 'wiki_desc_d128': 400 rows derived from 'wiki_desc_d384' at dimension 128" in result.stderr


def test_bytes_per_vector(evaluated):
    _, _, report = evaluated
    for dim in DIMS:
        assert _rows(report, dim, "exact")[0]["bytes_per_vector"] == 4 * dim
        assert _rows(report, dim, "ivf_pq")[0]["bytes_per_vector"] == dim / 8  # one byte per 8-dim sub-vector
        assert _rows(report, dim, "ivf_rq")[0]["bytes_per_vector"] == dim / 2  # 4 bits per dimension


@pytest.mark.parametrize("dim", DIMS)
def test_exact_metrics_equal_a_numpy_computation(evaluated, dataset, dim):
    from pipelines.search.searcher import Searcher

    _, out, report = evaluated
    table = _table(out, dim).to_arrow()
    doc_ids = table.column("id").to_pylist()
    docs = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    qids = list(dataset.queries)
    queries = Searcher.open(str(out / "lancedb"), f"wiki_desc_d{dim}").embed_queries([dataset.queries[q] for q in qids])
    order = np.argsort(-(queries @ docs.T), axis=1, kind="stable")
    expected = _numpy_metrics(order, doc_ids, qids, dataset.qrels)
    got = _rows(report, dim, "exact")[0]["metrics"]
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.5 < got["ndcg@10"] <= 1.0  # real text: the described article is usually near the top


def _padded(ranked: list[list], doc_ids: list) -> np.ndarray:
    """Rankings of ids (of any lengths) as rows of column numbers, padded to 100 with "no document"."""
    column = {d: i for i, d in enumerate(doc_ids)}
    return np.array([[column[d] for d in r] + [len(doc_ids)] * (100 - len(r)) for r in ranked])


def _rrf(legs: list[list], limit: int, k: int = 60) -> list:
    """Reciprocal rank fusion from its definition: sum of 1 / (k + rank) over the rankings that hold a
    document; ties in the order the documents were first seen (vector leg first)."""
    scores: dict = {}
    for ranked in legs:
        for rank, doc in enumerate(ranked, 1):
            scores[doc] = scores.get(doc, 0.0) + 1 / (k + rank)
    return sorted(scores, key=lambda d: -scores[d])[:limit]


@pytest.mark.parametrize("dim", DIMS)
def test_text_vector_and_hybrid_metrics_equal_a_recomputation(evaluated, dataset, dim):
    """Vector: numpy's exact ranking; text: the BM25 hits Searcher returns (the full-text index the run
    built); hybrid: both fused here by the definition of reciprocal rank fusion; metrics by numpy."""
    from pipelines.search.searcher import Searcher

    _, out, report = evaluated
    data = _table(out, dim).to_arrow()
    doc_ids = data.column("id").to_pylist()
    docs = np.asarray(data.column("vector").to_pylist(), dtype=np.float32)
    qids = list(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    searcher = Searcher.open(str(out / "lancedb"), f"wiki_desc_d{dim}")
    assert searcher.text_index["column"] == "text" and searcher.text_index["rows"] == 400
    queries = searcher.embed_queries(texts)
    vector = [[doc_ids[i] for i in row] for row in np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :100]]
    text = [searcher.search(t, k=100, mode="text", columns=["id"]).column("id").to_pylist() for t in texts]
    assert all(len(t) <= 100 for t in text) and np.mean([len(t) > 0 for t in text]) > 0.9
    hybrid = [_rrf([v, t], 100) for v, t in zip(vector, text)]
    got = {r["mode"]: r for r in report["modes"] if r["dimension"] == dim}
    assert {r["table"] for r in got.values()} == {f"wiki_desc_d{dim}"}
    for mode, ranked in (("vector", vector), ("text", text), ("hybrid", hybrid)):
        expected = _numpy_metrics(_padded(ranked, doc_ids), doc_ids, qids, dataset.qrels)
        assert got[mode]["metrics"] == pytest.approx(expected, abs=1e-9), mode
        assert 0.3 < got[mode]["metrics"]["ndcg@10"] <= got[mode]["metrics"]["recall@100"] <= 1.0, mode
    assert got["vector"]["metrics"] == _rows(report, dim, "exact")[0]["metrics"]  # both exact search
    # The words do not depend on the dimension: the same text metrics on every table.
    assert got["text"]["metrics"] == next(r["metrics"] for r in report["modes"] if r["mode"] == "text")


@pytest.mark.parametrize("dim", DIMS)
def test_index_row_matches_a_direct_search_at_the_stored_defaults(evaluated, dataset, dim):
    """The table now holds the last index built (IVF-RQ); search it directly with its lineage's defaults."""
    from pipelines.search.searcher import Searcher

    _, out, report = evaluated
    lineage = read_lineage(str(out / "lancedb"), f"wiki_desc_d{dim}")
    row = _rows(report, dim, "ivf_rq")[0]
    assert lineage["index"]["type"] == "ivf_rq"
    assert (row["nprobes"], row["refine_factor"]) == (
        lineage["query_defaults"]["nprobes"],
        lineage["query_defaults"]["refine_factor"],
    )
    assert lineage["tuning"]["reached"] and lineage["tuning"]["recall"] >= 0.95
    assert row["tuned_recall_at_10"] == lineage["tuning"]["recall"]

    table = _table(out, dim)
    data = table.to_arrow()
    doc_ids = data.column("id").to_pylist()
    docs = np.asarray(data.column("vector").to_pylist(), dtype=np.float32)
    qids = list(dataset.queries)
    queries = Searcher.open(str(out / "lancedb"), f"wiki_desc_d{dim}").embed_queries([dataset.queries[q] for q in qids])
    exact_top10 = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :10]
    column = {d: i for i, d in enumerate(doc_ids)}
    ann = []
    for q in queries:
        hits = (
            table.search(q)
            .distance_type("cosine")
            .nprobes(row["nprobes"])
            .refine_factor(row["refine_factor"])
            .limit(100)
            .to_arrow()
        )
        ann.append([column[i] for i in hits.column("id").to_pylist()])
    overlap = np.mean([len(set(a[:10]) & set(e)) / 10 for a, e in zip(ann, exact_top10)])
    assert row["recall_at_10_vs_exact"] == pytest.approx(overlap, abs=1e-4)
    # Pad to a full ranking (unreturned documents after the hits) for the numpy metrics.
    order = np.array([a + [i for i in range(len(doc_ids)) if i not in set(a)] for a in ann])
    assert row["metrics"] == pytest.approx(_numpy_metrics(order, doc_ids, qids, dataset.qrels), abs=1e-9)


def test_configured_index_was_tuned_by_the_index_step(evaluated):
    _, _, report = evaluated
    # The corpus was embedded once, at 384; the 128 table was derived from it and indexed by the same step.
    assert [run["dimension"] for run in report["runs"]] == list(DIMS)
    wide, narrow = report["runs"]
    assert "derived_from" not in wide and wide["summary"]["rows_written"] == 400
    assert narrow["derived_from"] == "wiki_desc_d384" and "summary" not in narrow
    assert narrow["table_rows"] == 400 and narrow["index_seconds"] > 0 and narrow["derive_seconds"] > 0
    for run in report["runs"]:
        tuning = run["summary"]["tuning"] if "summary" in run else run["tuning"]
        assert tuning["reached"] and tuning["recall"] >= 0.95 and tuning["query_source"] == "pseudo-queries"
        row = _rows(report, run["dimension"], "ivf_pq")[0]
        assert (row["nprobes"], row["refine_factor"]) == (tuning["nprobes"], tuning["refine_factor"])
        assert row["tuned_recall_at_10"] == tuning["recall"]


@pytest.mark.parametrize("dim", DIMS)
def test_vectors_match_sentence_transformers_at_each_dimension(evaluated, dataset, st_model, dim):
    from pipelines.search.searcher import Searcher

    _, out, _ = evaluated
    data = _table(out, dim).to_arrow().slice(0, 24)
    texts = data.column("text").to_pylist()
    expected = st_model.encode(texts, normalize_embeddings=True, truncate_dim=dim)
    got = np.asarray(data.column("vector").to_pylist(), dtype=np.float32)
    assert expected.shape == got.shape == (24, dim)
    assert (expected * got).sum(1).min() >= 0.9999

    queries = [dataset.queries[q] for q in list(dataset.queries)[:24]]
    expected = st_model.encode(queries, normalize_embeddings=True, truncate_dim=dim)
    got = Searcher.open(str(out / "lancedb"), f"wiki_desc_d{dim}").embed_queries(queries)
    assert (expected * got).sum(1).min() >= 0.9999


def test_dataset_and_dimension_errors_exit_2_with_one_line(tmp_path):
    missing = _run(["--dataset", str(tmp_path / "nope")])
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope' / 'corpus.jsonl'}: file not found (expected the BEIR layout: corpus.jsonl, "
        "queries.jsonl, qrels/<split>.tsv)"
    ]
    bad = _run(["--dataset", str(DATASET), "--dimensions", "384,abc"])
    assert bad.returncode == 2 and "--dimensions '384,abc'" in bad.stderr
    # The job sets the source and the tables itself: a --set for them is refused, not ignored.
    for key in ("sink.uri=/tmp/elsewhere", "source.path=x.parquet", "sink.mode=append"):
        ignored = _run(["--dataset", str(DATASET), "--set", key])
        assert ignored.returncode == 2 and f"--set {key}: the evaluation sets source.*" in ignored.stderr


def test_query_cli_exact_flag_scans_every_vector(evaluated, dataset):
    _, out, _ = evaluated
    data = _table(out, 128).to_arrow()
    docs = np.asarray(data.column("vector").to_pylist(), dtype=np.float32)
    text = dataset.queries["q007"]
    # The query job's command line in this process (helpers/job_main.py).
    argv = ["--uri", out / "lancedb", "--table", "wiki_desc_d128", "-k", "5", "--exact", "--json", text]
    result = run_job_main(query_main, argv)
    assert result.returncode == 0, result.stderr[-2000:]
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    from pipelines.search.searcher import Searcher

    query = Searcher.open(str(out / "lancedb"), "wiki_desc_d128").embed_queries([text])[0]
    scores = docs @ query
    top = np.argsort(-scores)[:5]
    assert [h["id"] for h in hits] == [data.column("id")[int(i)].as_py() for i in top]
    assert [h["score"] for h in hits] == pytest.approx(scores[top].tolist(), abs=1e-5)
