"""Query job: embed text with the table's own model and print the nearest documents.

    python -m jobs.query --uri out/lancedb --table documents -k 5 "how do vaccines work"
    python -m jobs.query --uri out/lancedb --table documents --queries queries.jsonl --json
    python -m jobs.query --uri out/lancedb --table documents --mode hybrid "BRCA1 mutations"
    python -m jobs.query --uri out/lancedb --table documents --mode hybrid --rrf-k 10 --text-weight 0.7 "BRCA1"

With --json: one object per hit per line,
{"query_id": ..., "query": ..., "rank": 1, "id": ..., "score": ...}; rank counts from 1 and
query_id comes from the queries file (null for a query given on the command line); in hybrid mode
also "found_by": "vector", "text" or "vector,text".
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.args import add_fusion_arguments, fail, fusion_arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.query", description=__doc__.split("\n")[0])
    p.add_argument("text", nargs="*", help="query text (several words are joined)")
    p.add_argument("--uri", default="out/lancedb", help="LanceDB database (directory or s3://)")
    p.add_argument("--table", default="documents")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument(
        "--mode",
        choices=["vector", "text", "hybrid"],
        default="vector",
        help="vector: the query's embedding; text: its words (BM25, the table's full-text index); "
        "hybrid: both, fused by reciprocal rank",
    )
    add_fusion_arguments(p)
    p.add_argument("--queries", help="queries file: JSON Lines or Parquet with 'text' and 'id' (or BEIR's '_id')")
    p.add_argument("--where", help='SQL filter on metadata columns, e.g. "length_chars > 500"')
    p.add_argument("--nprobes", type=int, help="IVF lists to probe (default: stored with the table)")
    p.add_argument("--refine-factor", type=int, help="re-rank k*R candidates exactly (default: stored)")
    p.add_argument("--exact", action="store_true", help="scan every vector instead of the index")
    p.add_argument("--model", help="local path of the table's model, when not at the recorded path")
    p.add_argument("--json", action="store_true", help="one JSON object per hit per line")
    args = p.parse_args(argv)
    if bool(args.text) == bool(args.queries):
        p.error("give either a query text or --queries FILE")
    if args.k < 1:
        p.error("-k must be >= 1")
    if args.mode == "text":
        vector_only = [f for f, v in (("--nprobes", args.nprobes), ("--refine-factor", args.refine_factor),
                                      ("--exact", args.exact)) if v]  # fmt: skip
        if vector_only:
            p.error(f"{vector_only[0]} applies to the vector search, not --mode text")
    args.fusion = fusion_arguments(p, args)
    if args.fusion and args.mode != "hybrid":
        flag = "--" + next(iter(args.fusion)).replace("_", "-")
        p.error(f"{flag} sets the hybrid search's fusion, not --mode {args.mode}")
    return args


def _load_queries(args) -> list[tuple[object, str]]:
    if not args.queries:
        return [(None, " ".join(args.text))]
    from connectors.query_files import read_queries

    return read_queries(args.queries)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from pipelines.search.searcher import Searcher

        queries = _load_queries(args)
        searcher = Searcher.open(args.uri, args.table, model_path=args.model)
        id_column = searcher.lineage.source.id_column
        text_column = searcher.lineage.source.text_column
        texts = [text for _, text in queries]
        vectors = searcher.embed_queries(texts) if args.mode != "text" else texts
        for (query_id, text), vector in zip(queries, vectors):
            hits = searcher.search(
                vector,
                k=args.k,
                mode=args.mode,
                text=text,
                where=args.where,
                nprobes=args.nprobes,
                refine_factor=args.refine_factor,
                exact=args.exact,
                **args.fusion,
            ).to_pylist()
            if args.json:
                for rank, hit in enumerate(hits, 1):
                    print(
                        json.dumps(
                            {
                                "query_id": query_id,
                                "query": text,
                                "rank": rank,
                                "id": hit[id_column],
                                "score": round(float(hit["score"]), 6),
                                **({"found_by": hit["found_by"]} if args.mode == "hybrid" else {}),
                            }
                        )
                    )
                continue
            print(f"\nquery: {text}")
            for rank, hit in enumerate(hits, 1):
                snippet = " ".join(str(hit[text_column]).split())[:100]
                found = f"  [{hit['found_by']}]" if args.mode == "hybrid" else ""
                print(f"{rank:3d}. {hit['score']:.4f}  {hit[id_column]}  {snippet}{found}")
    except Exception as exc:  # noqa: BLE001
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
