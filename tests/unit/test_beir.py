"""The BEIR-layout reader, and the shipped test set being exactly what its build script makes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connectors.beir import DatasetError, load_beir, write_corpus_parquet

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "data" / "eval" / "wiki_desc"


def _write(root: Path, corpus, queries, qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


CORPUS = [{"_id": "d1", "title": "Rivers", "text": "Water flows."}, {"_id": "d2", "text": "No title here."}]
QUERIES = [{"_id": "q1", "text": "flowing water"}, {"_id": "q2", "text": "unjudged"}]


def test_reads_the_layout_and_keeps_only_judged_queries(tmp_path):
    ds = load_beir(_write(tmp_path / "set", CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n"))
    assert ds.name == "set"
    assert [d["id"] for d in ds.corpus] == ["d1", "d2"] and ds.corpus[1]["title"] == ""
    assert ds.queries == {"q1": "flowing water"}
    assert ds.qrels == {"q1": {"d1": 2, "d2": 0}}
    table = pq.read_table(write_corpus_parquet(ds, tmp_path / "c.parquet"))
    assert table.column("text").to_pylist() == ["Rivers Water flows.", "No title here."]


@pytest.mark.parametrize(
    "corpus, qrels, message",
    [
        (CORPUS, "q1\td9\t1\n", r"test.tsv:1: document 'd9' is not in corpus.jsonl"),
        (CORPUS, "query-id\tcorpus-id\tscore\nq7\td1\t1\n", r"test.tsv:2: query 'q7' is not in queries.jsonl"),
        (CORPUS, "q1\td1\thigh\n", r"test.tsv:1: score 'high' is not an integer"),
        (CORPUS, "q1 d1 1\n", r"test.tsv:1: expected query-id, corpus-id and score"),
        (CORPUS + [{"_id": "d1", "text": "again"}], "q1\td1\t1\n", r"corpus.jsonl:3: duplicate _id 'd1'"),
        ([{"id": "d1", "text": "x"}], "q1\td1\t1\n", r"corpus.jsonl:1: expected an object with '_id'"),
    ],
)
def test_problems_name_the_file_and_line(tmp_path, corpus, qrels, message):
    root = _write(tmp_path / "set", corpus, QUERIES, qrels)
    with pytest.raises(DatasetError, match=message):
        load_beir(root)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"corpus.jsonl: file not found"):
        load_beir(tmp_path)


def test_shipped_set_is_what_the_build_script_makes(tmp_path):
    out = tmp_path / "rebuilt"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_eval_set.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert (out / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    ds = load_beir(SHIPPED)
    assert (len(ds.corpus), len(ds.queries)) == (400, 100)
    assert all(len(rels) == 1 and list(rels.values()) == [1] for rels in ds.qrels.values())
    sample = {r["id"]: r for r in pq.read_table(ROOT / "data" / "sample" / "wiki_vital.parquet").to_pylist()}
    for qid, rels in ds.qrels.items():  # each query is its article's own short description
        assert ds.queries[qid] == sample[next(iter(rels))]["description"]


def test_title_set_asks_for_each_article_by_its_title_against_the_lead_alone(tmp_path):
    out = tmp_path / "titles"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_eval_set.py"), "--kind", "title", "--docs", "300"]
        + ["--queries", "120", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    ds = load_beir(out)
    assert (len(ds.corpus), len(ds.queries)) == (300, 120)
    sample = {r["id"]: r for r in pq.read_table(ROOT / "data" / "sample" / "wiki_vital.parquet").to_pylist()}
    for doc in ds.corpus:  # the lead as it is, no title field for the query's words to sit in
        assert (doc["title"], doc["text"]) == ("", sample[doc["id"]]["text"])
    titles = {r["title"].lower() for r in sample.values()}
    assert len(titles) == len(sample)  # every title names one article only
    for qid, rels in ds.qrels.items():
        assert list(rels.values()) == [1]
        assert ds.queries[qid] == sample[next(iter(rels))]["title"]
    # the same selection as the description set: the corpus is the same articles
    desc = tmp_path / "desc"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_eval_set.py"), "--docs", "300", "--queries", "5"]
        + ["--out", str(desc)],
        check=True,
        capture_output=True,
    )
    assert [d["id"] for d in load_beir(desc).corpus] == [d["id"] for d in ds.corpus]
