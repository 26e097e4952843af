"""The evaluation's one-pass path: a 128-dimensional table and query vectors derived from a 384-dimensional
run equal those of a separate indexing run at 128 dimensions on the same corpus.

100 documents and the 100 queries of the shipped set; the wide table goes through the evaluation's own
steps (``_indexed``, ``_derived``), the other through ``run_index`` and ``Searcher.open`` as a user would.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from connectors.beir import load_beir, write_corpus_parquet
from connectors.lance.metadata import read_lineage
from connectors.lance.table import table_schema
from pipelines.config import load_config
from pipelines.lineage import VECTOR_FIELDS, check_compatible

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "data" / "eval" / "wiki_desc"
DOCS = 100


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory):
    from pipelines.evaluation.evaluate import _derived, _indexed, _run_config
    from pipelines.run.runner import run_index
    from pipelines.search.searcher import Searcher

    root = tmp_path_factory.mktemp("derive")
    full = load_beir(DATASET)
    dataset = dataclasses.replace(full, corpus=full.corpus[:DOCS])
    corpus = write_corpus_parquet(dataset, root / "corpus.parquet")
    db = str(root / "lancedb")
    texts = list(dataset.queries.values())
    # min_rows below the corpus, so that both tables get an IVF-PQ index, built and tuned.
    base = load_config(overrides=["compute.block_rows=50", "index.min_rows=64"])
    wide = _indexed(_run_config(base, corpus, db, "wide_d384", 384), texts, None, False)
    derived = _derived(_run_config(base, corpus, db, "derived_d128", 128), wide)
    separate = _run_config(base, corpus, db, "separate_d128", 128)
    run_index(separate)
    queries = Searcher.open(db, "separate_d128").embed_queries(texts)
    return db, wide, derived, queries


def _by_id(db: str, table: str):
    import lancedb

    data = lancedb.connect(db).open_table(table).to_arrow()
    return data.sort_by("id"), data.schema


def test_derived_rows_equal_a_separate_run_at_that_dimension(runs):
    db, wide, derived, _ = runs
    got, got_schema = _by_id(db, "derived_d128")
    want, want_schema = _by_id(db, "separate_d128")
    assert got.num_rows == want.num_rows == derived.rows == DOCS
    assert got_schema.remove_metadata() == want_schema.remove_metadata()
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    vectors = np.asarray(got.column("vector").to_pylist(), dtype=np.float32)
    expected = np.asarray(want.column("vector").to_pylist(), dtype=np.float32)
    assert vectors.shape == expected.shape == (DOCS, 128)
    assert np.abs(vectors - expected).max() < 1e-6
    # Every other column as the run wrote it, the content hash (keyed by the dimension) included;
    # run_id is the wide run's, whose rows these are.
    same = [c for c in want.column_names if c not in ("vector", "run_id")]
    assert "content_hash" in same and got.select(same).equals(want.select(same))
    wide_rows, _ = _by_id(db, "wide_d384")
    assert got.column("content_hash") != wide_rows.column("content_hash")
    assert set(got.column("run_id").to_pylist()) == {wide.run["summary"]["run_id"]}


def test_derived_lineage_is_a_runs_at_that_dimension(runs):
    db, wide, derived, _ = runs
    got = read_lineage(db, "derived_d128")
    want = read_lineage(db, "separate_d128")
    check_compatible(want, got, "the derived table", fields=VECTOR_FIELDS)  # raises naming any difference
    assert got["dimension"] == want["dimension"] == 128
    assert got["derived_from"] == {"table": "wide_d384", "version": wide.searcher.version, "dimension": 384}
    assert set(got) - {"derived_from"} == set(want)
    assert got["index"]["type"] == want["index"]["type"] == "ivf_rq"
    assert got["index"]["num_bits"] == want["index"]["num_bits"] == 4
    assert got["tuning"]["reached"] and got["query_defaults"]["nprobes"] == got["index"]["nprobes"]
    # LanceDB's embedding function entry (what plain search("text") embeds with) names dimension 128 too.
    metadata = [table_schema(db, t).metadata for t in ("derived_d128", "separate_d128")]
    assert metadata[0][b"embedding_functions"] == metadata[1][b"embedding_functions"]
    assert derived.run["derived_from"] == "wide_d384" and derived.run["index_seconds"] > 0
    assert derived.run["tuning"]["recall"] == got["tuning"]["recall"] and derived.searcher.dimension == 128


def test_derived_query_vectors_equal_the_separate_tables_searcher(runs):
    _, wide, derived, queries = runs
    assert derived.queries.shape == queries.shape == (100, 128)
    assert np.abs(derived.queries - queries).max() < 1e-6
    assert wide.queries.shape == (100, 384)
