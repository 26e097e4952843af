"""Read a retrieval test set in the BEIR layout, and write its corpus as Parquet for the indexing job.

    DIR/corpus.jsonl      {"_id": "d1", "title": "...", "text": "..."} per line
    DIR/queries.jsonl     {"_id": "q1", "text": "..."} per line
    DIR/qrels/test.tsv    query-id <TAB> corpus-id <TAB> score, after a header line

Every problem names the file and line. Qrels that point at a document or query that is not in the
files are errors, not silently dropped judgments: they would lower every score without a trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.errors import UserError

__all__ = ["BeirDataset", "DatasetError", "load_beir", "write_corpus_parquet"]


class DatasetError(UserError):
    """The evaluation set is missing a file or has a malformed line; the message names it."""


@dataclass
class BeirDataset:
    name: str
    corpus: list[dict]  # {"id", "title", "text"}
    queries: dict[str, str]  # query id -> text, only the queries that have qrels
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DatasetError(
            f"{path}: file not found (expected the BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
        )
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}:{n}: not valid JSON ({exc})") from None
            if not isinstance(row, dict) or "_id" not in row or not isinstance(row.get("text"), str):
                raise DatasetError(f"{path}:{n}: expected an object with '_id' and a string 'text'")
            rows.append((n, row))
    return rows


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """Load corpus, queries and the qrels of ``split``; only queries with qrels are kept."""
    root = Path(directory)
    corpus, seen = [], set()
    for n, row in _jsonl(root / "corpus.jsonl"):
        doc_id = str(row["_id"])
        if doc_id in seen:
            raise DatasetError(f"{root / 'corpus.jsonl'}:{n}: duplicate _id {doc_id!r}")
        seen.add(doc_id)
        corpus.append({"id": doc_id, "title": str(row.get("title") or ""), "text": row["text"]})
    all_queries = {str(row["_id"]): row["text"] for _, row in _jsonl(root / "queries.jsonl")}

    path = root / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("\t")
            if n == 1 and fields[0] == "query-id":
                continue
            if not line.strip():
                continue
            if len(fields) != 3:
                raise DatasetError(f"{path}:{n}: expected query-id, corpus-id and score separated by tabs")
            qid, doc_id, score = fields
            try:
                relevance = int(score)
            except ValueError:
                raise DatasetError(f"{path}:{n}: score {score!r} is not an integer") from None
            if qid not in all_queries:
                raise DatasetError(f"{path}:{n}: query {qid!r} is not in queries.jsonl")
            if doc_id not in seen:
                raise DatasetError(f"{path}:{n}: document {doc_id!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[doc_id] = relevance
    if not qrels:
        raise DatasetError(f"{path}: no judgments")
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(name=root.resolve().name, corpus=corpus, queries=queries, qrels=qrels)


def write_corpus_parquet(dataset: BeirDataset, path: str | Path) -> Path:
    """The corpus as Parquet (``id``, ``title``, ``text``), the text being ``title + " " + text``.

    Title and body are embedded together, as BEIR's dense-retrieval evaluation does.
    """
    texts = [f"{d['title']} {d['text']}".strip() for d in dataset.corpus]
    table = pa.table(
        {
            "id": [d["id"] for d in dataset.corpus],
            "title": [d["title"] for d in dataset.corpus],
            "text": texts,
        }
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
