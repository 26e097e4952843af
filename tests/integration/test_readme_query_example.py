"""The README's "Querying from Python" code, run as written, on a table built like the demo's.

The code blocks are read from the README (so what it shows is what runs) and executed in a fresh
interpreter whose working directory holds ``out/lancedb`` with table ``wiki``: 60 sample documents
indexed with ``jobs/configs/demo.yaml``. Then plain LanceDB's searches in a fresh interpreter (by
embedding, ``query_type="fts"`` and ``"hybrid"``) against ``Searcher``'s hits in each mode, and
``Searcher.search(filters=...)`` on the same table with hostile values.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.run.runner import run_index
from pipelines.search.searcher import FilterError, LineageMismatchError, Searcher

ROOT = Path(__file__).resolve().parents[2]


def readme_python_blocks(section: str = "## Querying from Python") -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(section + "\n")
    end = readme.find("\n## ", start + len(section))
    blocks = re.findall(r"```python\n(.*?)```", readme[start : end if end > 0 else None], flags=re.S)
    assert len(blocks) == 2, "the section shows the Searcher example and the plain lancedb one"
    return "\n".join(blocks)


@pytest.fixture(scope="module")
def demo_dir(ray_cluster, sample_table, tmp_path_factory) -> Path:
    """A working directory with out/lancedb/wiki, as `bash scripts/demo.sh` leaves it (60 documents)."""
    work = tmp_path_factory.mktemp("readme")
    source = work / "docs.parquet"
    pq.write_table(sample_table.slice(0, 60), source)
    config = load_config(
        ROOT / "jobs" / "configs" / "demo.yaml", [f"source.path={source}", f"sink.uri={work / 'out' / 'lancedb'}"]
    )
    run_index(config)
    return work


def test_readme_python_example_runs_as_written(demo_dir):
    code = readme_python_blocks()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=demo_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert '["A Doll\'s House"]' in out  # the filter with a quote in its value found the one document
    assert "all-MiniLM-L6-v2 384 cosine" in out  # the lineage read with plain lancedb
    assert "60 [" in out  # count_rows and the column names
    assert "wiki-" in out  # the text searches found documents


# Plain LanceDB, nothing of the project but the import its embedding registry needs.
PLAIN_TEXT_SEARCH = """
import json
import lancedb
import pipelines.search.searcher  # noqa: F401

table = lancedb.connect("out/lancedb").open_table("wiki")
print(json.dumps(table.search("how do vaccines work").limit(5).to_pandas()["id"].tolist()))
print(json.dumps(table.search("city", query_type="fts").limit(5).to_pandas()["id"].tolist()))
hybrid = table.search("the largest city", query_type="hybrid").limit(5).to_arrow()
print(json.dumps(dict(zip(hybrid["id"].to_pylist(), hybrid["_relevance_score"].to_pylist()))))
"""


def test_plain_lancedb_text_search_embeds_with_the_tables_model(demo_dir):
    """``open_table(...).search("text")`` in a fresh process: the query embedded with the table's
    model, prompt, dimension and normalisation, the same hits as ``Searcher`` (60 rows: no index,
    both search exactly)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_TEXT_SEARCH], cwd=demo_dir, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    plain, fts, hybrid = (json.loads(line) for line in done.stdout.strip().splitlines()[-3:])
    searcher = Searcher.open(str(demo_dir / "out" / "lancedb"), "wiki")
    assert not searcher.has_index  # else LanceDB's default nprobes and Searcher's tuned ones would differ
    assert plain == searcher.search("how do vaccines work", k=5).column("id").to_pylist()
    # The job's full-text index answers LanceDB's own text and hybrid queries (its RRF reranker):
    # the same hits and fused scores as Searcher's modes.
    assert fts and fts == searcher.search("city", k=5, mode="text").column("id").to_pylist()
    ours = searcher.search("the largest city", k=5, mode="hybrid")
    assert set(hybrid) == set(ours.column("id").to_pylist())
    for doc_id, score in zip(ours.column("id").to_pylist(), ours.column("score").to_pylist()):
        assert score == pytest.approx(hybrid[doc_id], rel=1e-6)
    # The same vector, not merely the same ranking: LanceDB's function against Searcher's embedding.
    function = searcher.table.embedding_functions["vector"].function
    np.testing.assert_allclose(
        function.compute_query_embeddings("how do vaccines work")[0],
        searcher.embed_queries(["how do vaccines work"])[0],
        atol=1e-6,
    )
    documents = searcher.table.to_arrow().slice(0, 3)
    np.testing.assert_allclose(  # documents: the document prompt, as the job embedded them
        np.stack(function.compute_source_embeddings(documents.column("text"))),
        np.stack(documents.column("vector").to_numpy(zero_copy_only=False)),
        # float32 unless model.dtype auto chose bf16 on this CPU: batches of other shapes round differently
        atol=1e-5 if searcher.lineage.model.dtype == "float32" else 2e-2,
    )


def test_searcher_filters_are_typed_and_quoted(demo_dir):
    searcher = Searcher.open(str(demo_dir / "out" / "lancedb"), "wiki")
    vector = np.asarray(searcher.table.to_arrow().column("vector")[3].as_py(), np.float32)  # A Doll's House
    hit = searcher.search(vector, k=5, filters={"title": "A Doll's House"})
    assert hit.column("title").to_pylist() == ["A Doll's House"]
    assert searcher.search(vector, k=5, filters={"title": "' OR 1=1 --"}).num_rows == 0
    assert searcher.search(vector, k=5, filters={"title": "x' OR 'a'='a"}).num_rows == 0
    long_ones = searcher.search(vector, k=60, filters={"length_chars": (">", 500)}).column("length_chars")
    assert long_ones.to_pylist() and min(long_ones.to_pylist()) > 500
    both = searcher.search(vector, k=60, filters={"length_chars": (">", 500)}, where="length_chars < 600")
    assert all(500 < n < 600 for n in both.column("length_chars").to_pylist())
    with pytest.raises(FilterError, match="unknown column"):
        searcher.search(vector, k=5, filters={"title = '' OR 1=1 --": "x"})
    with pytest.raises(FilterError, match="does not fit its integer column"):
        searcher.search(vector, k=5, filters={"length_chars": "500 OR 1=1"})


def test_search_many_finds_what_one_search_each_finds(demo_dir):
    """The query service searches a batch of vectors at once (Searcher.search_many)."""
    searcher = Searcher.open(str(demo_dir / "out" / "lancedb"), "wiki")
    vectors = searcher.embed_queries(["a play about a marriage", "rivers", "vaccines", "the solar system", "x"])
    for options in ({}, {"filters": {"length_chars": (">", 500)}, "columns": ["id", "length_chars"]}):
        many = searcher.search_many(vectors, k=7, **options)
        assert len(many) == len(vectors)
        for vector, hits in zip(vectors, many):
            one = searcher.search(vector, k=7, **options)
            assert hits.column("id").to_pylist() == one.column("id").to_pylist() and one.num_rows > 0
            assert np.allclose(hits.column("score").to_numpy(), one.column("score").to_numpy(), atol=1e-6)
    nothing = searcher.search_many(vectors[:2], k=3, filters={"length_chars": (">", 10**9)})
    assert [t.num_rows for t in nothing] == [0, 0]
    with pytest.raises(LineageMismatchError, match="shape"):
        searcher.search_many(vectors[:, :10], k=3)
