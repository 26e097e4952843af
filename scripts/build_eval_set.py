#!/usr/bin/env python3
"""Build a small retrieval test set in the BEIR layout from the bundled Wikipedia sample.

Source
    ``data/sample/wiki_vital.parquet`` (Wikipedia vital-article lead sections, CC BY-SA 4.0; see
    ``data/sample/README.md``): columns ``id``, ``title``, ``description`` (the Wikidata short
    description, e.g. "Biological preparation that provides active acquired immunity"), ``text``.

Construction (a known-item task: one relevant document per query)
    corpus   the ``--docs`` articles with the smallest ``sha256(f"{seed}:corpus:{id}")``; each line is
             ``{"_id": id, "title": title, "text": text}`` (``--kind title``: the title left empty, so the
             query's words are not handed to the search in a field of their own).
    queries  ``--kind desc`` (default): articles of that corpus whose description has at least 3 words
             and is unique (case-insensitive) among all 3,000 sample articles, so no other article
             carries the same words; the query text is the description (a paraphrase, 7 words on average).
             ``--kind title``: articles of that corpus whose title is unique (case-insensitive) among the
             sample's; the query text is the title (a name or term, 1.8 words on average) and the
             passage is the article's lead (78 words on average): short queries against longer passages.
             Of these, the ``--queries`` with the smallest ``sha256(f"{seed}:query:{id}")``; query ids
             ``q000``, ``q001``, ... in document-id order.
    qrels    ``qrels/test.tsv``: each query's own article with score 1, no other judgment.

Usage
    .venv/bin/python scripts/build_eval_set.py --docs 400 --queries 100 --out data/eval/wiki_desc
    .venv/bin/python scripts/build_eval_set.py --docs 3000 --queries 1000 --out out/eval-sets/wiki_desc_3k
    .venv/bin/python scripts/build_eval_set.py --kind title --docs 3000 --queries 1000 --out out/eval-sets/wiki_title_3k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample" / "wiki_vital.parquet"


def _key(seed: int, what: str, doc_id: str) -> str:
    return hashlib.sha256(f"{seed}:{what}:{doc_id}".encode()).hexdigest()


KINDS = {
    # kind: (the query's column, the fewest words a query may have, the corpus keeps the title)
    "desc": ("description", 3, True),
    "title": ("title", 1, False),
}


def build(
    sample: Path, docs: int, queries: int, seed: int, kind: str = "desc"
) -> tuple[list[dict], list[dict], list[tuple]]:
    column, min_words, keep_title = KINDS[kind]
    rows = pq.read_table(sample, columns=["id", "title", "description", "text"]).to_pylist()
    if docs > len(rows):
        raise SystemExit(f"--docs {docs}: the sample has only {len(rows)} articles")
    seen = Counter((r[column] or "").strip().lower() for r in rows)
    corpus = sorted(sorted(rows, key=lambda r: _key(seed, "corpus", r["id"]))[:docs], key=lambda r: r["id"])
    usable = [
        r for r in corpus if r[column] and len(r[column].split()) >= min_words and seen[r[column].strip().lower()] == 1
    ]
    if queries > len(usable):
        raise SystemExit(f"--queries {queries}: only {len(usable)} articles of the corpus have a usable {column}")
    chosen = sorted(sorted(usable, key=lambda r: _key(seed, "query", r["id"]))[:queries], key=lambda r: r["id"])
    qs = [{"_id": f"q{i:03d}", "text": r[column].strip()} for i, r in enumerate(chosen)]
    qrels = [(q["_id"], r["id"], 1) for q, r in zip(qs, chosen)]
    docs_out = [{"_id": r["id"], "title": r["title"] if keep_title else "", "text": r["text"]} for r in corpus]
    return docs_out, qs, qrels


def write(out: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple]) -> None:
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        with (out / name).open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (out / "qrels" / "test.tsv").open("w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, doc_id, score in qrels:
            fh.write(f"{qid}\t{doc_id}\t{score}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="source Parquet (default: %(default)s)")
    parser.add_argument("--docs", type=int, default=400, help="corpus size (default: %(default)s)")
    parser.add_argument("--queries", type=int, default=100, help="number of queries (default: %(default)s)")
    parser.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="desc",
        help="queries: descriptions (paraphrases) or titles (names against the lead) (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the selection (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "data" / "eval" / "wiki_desc", help="output directory (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.docs < 1 or args.queries < 1:
        parser.error("--docs and --queries must be positive")
    corpus, queries, qrels = build(args.sample, args.docs, args.queries, args.seed, args.kind)
    write(args.out, corpus, queries, qrels)
    words = [len(q["text"].split()) for q in queries]
    print(f"wrote {len(corpus)} documents, {len(queries)} queries, {len(qrels)} judgments to {args.out}")
    print(f"query words: mean {sum(words) / len(words):.1f}, min {min(words)}, max {max(words)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
