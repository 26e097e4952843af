"""Evaluation job: retrieval quality of a config on a BEIR-layout test set, per Matryoshka dimension.

    python -m jobs.evaluate --dataset data/eval/wiki_desc --dimensions 384,256,128,64
    python -m jobs.evaluate --dataset DIR --config jobs/configs/demo.yaml --set model.dtype=bfloat16 \\
        --index-types ivf_pq,ivf_sq,ivf_rq --out out/eval/mine

The corpus is indexed with the config (source and sink are set by the job: one table per dimension in
OUT/lancedb); prints the Markdown tables (each search by dimension and index, then text, vector and
hybrid search side by side; --modes picks among those three) and writes OUT/results.md,
OUT/results.json and OUT/quality_vs_bytes.png.
Exit codes as jobs.index: 2 for a config or dataset error found before work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.args import add_config_arguments, add_fusion_arguments, fail, fusion_arguments, setup_logging

INDEX_TYPES = ("ivf_pq", "ivf_sq", "ivf_rq", "ivf_hnsw_sq")
SET_BY_THE_JOB = ("source.", "sink.uri", "sink.table", "sink.mode")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="directory with corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--split", default="test", help="qrels file to use (default: test)")
    add_config_arguments(
        p,
        config_help="YAML config file (model, embed, compute and index sections apply)",
        set_example="model.dtype=bfloat16",
    )
    p.add_argument(
        "--dimensions",
        help="comma-separated Matryoshka dimensions, e.g. 384,256,128,64 (default: the config's embed.dimension, "
        "else the ones the model declares, else its own)",
    )
    p.add_argument(
        "--index-types",
        default="",
        help=f"index types to evaluate besides the config's index.type, from {','.join(INDEX_TYPES)}",
    )
    p.add_argument(
        "--modes",
        default="all",
        help="search modes compared side by side on each table, from text,vector,hybrid (default: all)",
    )
    add_fusion_arguments(p)
    p.add_argument("--out", help="output directory (default: out/eval/<dataset directory name>)")
    args = p.parse_args(argv)
    # The job sets the source (the dataset's corpus) and where the tables go (OUT/lancedb, one
    # overwritten table per dimension): a --set for those would be silently replaced, so it is refused.
    ignored = [o for o in args.overrides if o.split("=", 1)[0].strip().startswith(SET_BY_THE_JOB)]
    if ignored:
        p.error(
            f"--set {ignored[0]}: the evaluation sets source.*, sink.uri, sink.table and sink.mode "
            f"itself (the dataset's corpus, one table per dimension in --out); use --dataset and --out"
        )
    args.fusion = fusion_arguments(p, args)
    if args.fusion and args.modes.strip() != "all" and "hybrid" not in args.modes:
        flag = "--" + next(iter(args.fusion)).replace("_", "-")
        p.error(f"{flag} sets the hybrid mode's fusion, and --modes {args.modes} has no hybrid")
    args.index_types = [t.strip() for t in args.index_types.split(",") if t.strip()]
    bad = [t for t in args.index_types if t not in INDEX_TYPES]
    if bad:
        p.error(f"--index-types: unknown {', '.join(bad)}; choose from {', '.join(INDEX_TYPES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        from pipelines.config import load_config
        from pipelines.evaluation.evaluate import evaluate_dataset, model_dimensions, parse_dimensions
        from pipelines.evaluation.modes import parse_modes
        from pipelines.evaluation.report import format_markdown, write_report

        config = load_config(args.config, args.overrides)
        dimensions = parse_dimensions(args.dimensions)
        modes = parse_modes(args.modes)
        if args.dimensions is None and config.embed.dimension is None:
            dimensions = model_dimensions(config) or dimensions  # the Matryoshka dimensions it declares
        out = Path(args.out or Path("out/eval") / Path(args.dataset).resolve().name)
        report = evaluate_dataset(
            args.dataset,
            config,
            dimensions,
            out,
            args.index_types,
            args.split,
            verbose=args.verbose,
            modes=modes,
            fusion=args.fusion or None,
            on_run=lambda summary: print(summary.format(), file=sys.stderr, flush=True),
        )
        paths = write_report(report, out)
    except Exception as exc:  # noqa: BLE001 - one clear line and an exit code
        return fail(exc)
    print(format_markdown(report))
    for what, path in paths.items():
        print(f"{what:9s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
