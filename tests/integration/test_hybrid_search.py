"""Text and hybrid search: the job's full-text index (index.fts), Searcher's modes and the query job's --mode.

One table of 40 sample documents (tiny BERT: the text search does not depend on the model), built by the
job and then upserted with one document changed and one new, each carrying a word no other document has;
every test reads that table. Plain LanceDB's ``query_type="fts"``/``"hybrid"`` in a fresh process is in
test_readme_query_example.py, on the demo's table.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers.job_main import run_job_main
from jobs.query import main as query_main
from pipelines.config import load_config
from pipelines.run.runner import run_index
from pipelines.search.searcher import Searcher, SearchModeError

CHANGED, NEW = "quokkas", "axolotls"  # words of the upsert's two documents, in no sample document


def _config(src, db, model, *extra):
    return load_config(
        overrides=[
            f"source.path={src}",
            f"sink.uri={db}",
            "sink.table=docs",
            f"model.path={model}",
            "source.metadata_columns=[title, length_chars]",
            "compute.block_rows=16",
            "index.type=none",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def table(ray_cluster, sample_table, tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    docs = sample_table.slice(0, 40).select(["id", "title", "text", "length_chars"])
    assert not any(w in t.lower() for t in docs.column("text").to_pylist() for w in (CHANGED, NEW))
    pq.write_table(docs, root / "day1.parquet")
    first = run_index(_config(root / "day1.parquet", root / "db", tiny_bert_dir))
    rows = docs.to_pylist()
    changed_id = rows[5]["id"]
    rows[5] = {**rows[5], "text": f"A field guide to {CHANGED}, small marsupials of Rottnest Island."}
    rows.append({"id": "new-1", "title": "Axolotl", "text": f"Mexican {NEW} regrow their limbs.", "length_chars": 31})
    pq.write_table(pa.Table.from_pylist(rows, schema=docs.schema), root / "day2.parquet")
    second = run_index(_config(root / "day2.parquet", root / "db", tiny_bert_dir, "sink.mode=upsert"))
    return root / "db", first, second, changed_id, docs


def test_the_job_builds_the_full_text_index_and_keeps_it_current_on_upsert(table):
    db, first, second, _, _ = table
    assert first.index["type"] == "none"  # 40 rows: no vector index, but a full-text index all the same
    assert first.index["fts"]["how"] == "built" and first.index["fts"]["rows"] == 40
    assert first.index["fts"]["column"] == "text" and first.index["fts"]["options"]["language"] == "English"
    assert second.index["fts"]["how"] == "updated" and second.index["fts"]["rows"] == 41
    assert "full-text index on text updated" in second.format()
    assert Searcher.open(str(db), "docs").text_index == second.index["fts"]  # recorded in the lineage


def test_text_search_finds_the_upserts_words_and_not_the_replaced_text(table):
    db, _, _, changed_id, docs = table
    searcher = Searcher.open(str(db), "docs")
    new = searcher.search(NEW, k=5, mode="text")
    assert new.column("id").to_pylist() == ["new-1"] and new.column("score").to_pylist()[0] > 0
    assert searcher.search(CHANGED, k=5, mode="text").column("id").to_pylist() == [changed_id]
    # A word only the replaced text had finds nothing of it any more.
    old_text = docs.column("text")[5].as_py().lower().split()
    others = " ".join(t.lower() for i, t in enumerate(docs.column("text").to_pylist()) if i != 5)
    only_old = next(w for w in old_text if w.isalpha() and len(w) > 6 and w not in others)
    assert changed_id not in searcher.search(only_old, k=40, mode="text").column("id").to_pylist()


def test_hybrid_fuses_both_searches_with_filters_on_both(table):
    db, _, _, changed_id, _ = table
    searcher = Searcher.open(str(db), "docs")
    query = f"{NEW} limbs"
    vector_ids = searcher.search(query, k=5).column("id").to_pylist()
    text_ids = searcher.search(query, k=5, mode="text").column("id").to_pylist()
    hits = searcher.search(query, k=5, mode="hybrid")
    assert hits.column("id").to_pylist()[0] == "new-1"  # found by the text search at rank 1
    for hit in hits.to_pylist():
        found = set(hit["found_by"].split(","))
        assert found == {m for m, ids in (("vector", vector_ids), ("text", text_ids)) if hit["id"] in ids}
    assert hits.num_rows == len(set(vector_ids) | set(text_ids)) or hits.num_rows == 5
    # A filter restricts both searches: the new document (31 characters) is filtered out of each.
    filtered = searcher.search(query, k=5, mode="hybrid", filters={"length_chars": (">", 100)})
    assert "new-1" not in filtered.column("id").to_pylist() and filtered.num_rows == 5
    assert min(filtered.column("length_chars").to_pylist()) > 100
    assert "new-1" not in searcher.search(NEW, k=5, mode="text", where="length_chars > 100").column("id").to_pylist()
    # A vector query takes its words from text=.
    vector = searcher.embed_queries([query])[0]
    same = searcher.search(vector, k=5, mode="hybrid", text=query)
    assert same.column("id").to_pylist() == hits.column("id").to_pylist()


def test_the_fusions_rank_constant_and_text_weight(table):
    db, _, _, _, _ = table
    searcher = Searcher.open(str(db), "docs")
    query = f"{NEW} limbs regrow"
    vector_ids = searcher.search(query, k=10).column("id").to_pylist()
    text_ids = searcher.search(query, k=10, mode="text").column("id").to_pylist()
    # All weight on one search: its ranking first, then the other's rows it did not find, in their order.
    only_text = searcher.search(query, k=10, mode="hybrid", text_weight=1.0).column("id").to_pylist()
    assert only_text == (text_ids + [i for i in vector_ids if i not in text_ids])[:10]
    only_vector = searcher.search(query, k=10, mode="hybrid", text_weight=0.0).column("id").to_pylist()
    assert only_vector == (vector_ids + [i for i in text_ids if i not in vector_ids])[:10]
    # The scores follow the definition: the weight times 1 / (k + rank) summed over the searches.
    hits = searcher.search(query, k=10, mode="hybrid", rrf_k=5, text_weight=0.7).to_pylist()
    for hit in hits:
        expected = sum(
            weight / (5 + ids.index(hit["id"]) + 1)
            for weight, ids in ((0.6, vector_ids), (1.4, text_ids))
            if hit["id"] in ids
        )
        assert hit["score"] == pytest.approx(expected, rel=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # Settings that do not apply, or out of range, are errors rather than ignored.
    for options, message in (
        (dict(mode="vector", rrf_k=10), "rrf_k set the hybrid search's fusion, not a vector search"),
        (dict(mode="text", text_weight=0.3), "text_weight set the hybrid search's fusion, not a text search"),
        (dict(mode="hybrid", text_weight=1.5), "text_weight must be between 0 and 1, got 1.5"),
        (dict(mode="hybrid", rrf_k=0), "rrf_k must be a whole number >= 1, got 0"),
        (dict(mode="text", nprobes=5, exact=True), "nprobes and exact set the vector search, not a text search"),
    ):
        with pytest.raises(SearchModeError, match=message):
            searcher.search(query, **options)


def test_bad_modes_and_tables_without_a_text_index_are_clear_errors(table):
    db, _, _, _, _ = table
    searcher = Searcher.open(str(db), "docs")
    with pytest.raises(SearchModeError, match="search mode 'keyword': one of vector, text, hybrid"):
        searcher.search("x", mode="keyword")
    with pytest.raises(SearchModeError, match="needs the query's text"):
        searcher.search(searcher.embed_queries(["x"])[0], mode="hybrid")
    index = {k: v for k, v in searcher.lineage.index.items() if k != "fts"}  # a table of before index.fts
    older = Searcher(searcher.table, searcher.lineage.updated(index=index))
    with pytest.raises(SearchModeError, match="needs the table's full-text index, and this table has none"):
        older.search("x", mode="text")
    assert older.search("x", k=3).num_rows == 3  # vector search as before


def test_query_job_modes(table, capsys):
    db, _, _, _, _ = table
    base = ["--uri", str(db), "--table", "docs", "-k", "3", "--json"]
    done = run_job_main(query_main, [*base, "--mode", "hybrid", f"{NEW} limbs"])
    assert done.returncode == 0, done.stderr
    hits = [json.loads(line) for line in done.stdout.splitlines()]
    assert hits[0]["id"] == "new-1" and hits[0]["rank"] == 1 and "text" in hits[0]["found_by"]
    text = run_job_main(query_main, [*base, "--mode", "text", NEW])
    assert [json.loads(line)["id"] for line in text.stdout.splitlines()] == ["new-1"]
    assert "found_by" not in text.stdout
    fused = run_job_main(query_main, [*base, "--mode", "hybrid", "--text-weight", "1", "--rrf-k", "5", f"{NEW} limbs"])
    assert [json.loads(line)["id"] for line in fused.stdout.splitlines()][0] == "new-1", fused.stderr
    refused = (
        (["--mode", "bm25"], "invalid choice: 'bm25'"),
        (["--mode", "text", "--exact"], "--exact"),
        (["--rrf-k", "10"], "--rrf-k sets the hybrid search's fusion, not --mode vector"),
        (["--mode", "text", "--text-weight", "0.5"], "--text-weight sets the hybrid search's fusion, not --mode text"),
        (["--mode", "hybrid", "--text-weight", "2"], "--text-weight must be between 0 and 1"),
        (["--mode", "hybrid", "--rrf-k", "0"], "--rrf-k must be >= 1"),
    )
    for bad, message in refused:
        with pytest.raises(SystemExit) as exc:
            query_main([*base, *bad, NEW])
        assert exc.value.code == 2 and message in capsys.readouterr().err
