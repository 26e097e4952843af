"""Bulk indexing job.

    python -m jobs.index [--config FILE] [--set key=value ...] [--summary-json FILE] [--dry-run]
    ray job submit --working-dir . -- python -m jobs.index --config jobs/configs/demo.yaml

Exit 0 only when the table and its index are written; otherwise one line on stderr and exit 1
(2 for a configuration or input error found before any work started).
"""

from __future__ import annotations

import argparse
import sys

from jobs.args import add_config_arguments, fail, report, setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.index", description=__doc__.split("\n")[0])
    add_config_arguments(
        parser,
        "YAML config file (sections: source, model, embed, compute, sink, index)",
        "compute.actors=2",
        "also write the run summary as JSON to FILE ('-': one line on "
        "stdout, for schedulers that read the job's output)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing: list files and rows, sample texts (tokens, truncation, chunks), time the encoder on "
        "its device, and estimate the run's time and the table's size",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from pipelines.config import load_config

    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(config.model_dump(), sort_keys=False))
            return 0
        if args.dry_run:
            from pipelines.run.dry_run import dry_run

            summary = dry_run(config)
        else:
            from pipelines.run.runner import run_index

            summary = run_index(config, verbose=args.verbose)
    except Exception as exc:  # noqa: BLE001 - the job's contract is one clear line and an exit code
        return fail(exc)
    report(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
