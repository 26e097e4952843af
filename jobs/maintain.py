"""Index upkeep, housekeeping and health check of a table, with the same config as the job that writes it.

    python -m jobs.maintain --config FILE [--set key=value ...] [--summary-json FILE|-] [--skip-id-check]

Reports the vector index's indexed and unindexed rows, runs ``optimize()`` or rebuilds the index by
``index.reindex_fraction`` (the policy of append/upsert runs), reports again; compacts the table,
``<table>_rejects`` and ``<table>_runs`` and prunes their versions older than ``sink.keep_versions``
(per table: fragments before/after, versions removed, bytes freed); and checks that no id is in the
table twice. Run it when no indexing job writes the table (compaction moves rows). Exit 0 when all
is well; 1 when an id is duplicated (the report is printed first) or the upkeep failed; 2 when the
config is invalid or the table does not exist.
"""

from __future__ import annotations

import argparse
import sys

from jobs.args import add_config_arguments, fail, setup_logging
from jobs.args import report as show


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.maintain", description=__doc__.split("\n")[0])
    add_config_arguments(
        parser,
        "YAML config file; sink.* (keep_versions: how far back versions are kept), index.* and storage.* are used",
        "sink.table=wiki",
        "also write the report as JSON to FILE ('-': one line on stdout)",
    )
    parser.add_argument(
        "--skip-id-check",
        action="store_true",
        help="do not scan the id column for duplicates (8 bytes of memory per row)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from pipelines.config import load_config

    try:
        config = load_config(args.config, args.overrides)
        from pipelines.maintenance import run_maintenance

        report = run_maintenance(config, check_ids=not args.skip_id_check)
    except Exception as exc:  # noqa: BLE001 - one clear line and an exit code
        return fail(exc)
    show(report, args.summary_json)
    try:
        report.raise_for_duplicates()
    except Exception as exc:  # noqa: BLE001
        return fail(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
