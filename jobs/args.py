"""What every job shares on the command line: the config options, the log lines, the result output, and
what it does with an error (one clear line on stderr and a non-zero exit code)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Optional


def setup_logging(verbose: bool = False) -> None:
    """The project's log lines on stderr as ``[embedpipe] ...``: progress and decisions at INFO,
    details at DEBUG with ``--verbose`` (which also brings back Ray Data's own progress)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[embedpipe] %(message)s"))
    for name in ("pipelines", "connectors", "jobs"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False


def add_config_arguments(parser, config_help: str, set_example: str, summary_help: Optional[str] = None) -> None:
    """The options every config-driven job has: --config, --set KEY=VALUE, --verbose, and --summary-json
    where the job writes a run summary (``summary_help`` given)."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config key, e.g. --set {set_example} (repeatable)",
    )
    if summary_help is not None:
        parser.add_argument("--summary-json", metavar="FILE", help=summary_help)
    parser.add_argument(
        "--verbose", action="store_true", help="debug lines, and Ray Data's per-operator progress every few seconds"
    )


def add_fusion_arguments(parser) -> None:
    """The hybrid search's fusion settings, for the jobs that search (``jobs.query``, ``jobs.evaluate``)."""
    parser.add_argument("--rrf-k", type=int, help="hybrid: the fusion's rank constant (default 60)")
    parser.add_argument(
        "--text-weight",
        type=float,
        help="hybrid: the text search's share of the fused score, 0 to 1 (default 0.5: both alike)",
    )


def fusion_arguments(parser, args) -> dict:
    """The fusion settings given (``{}`` when none, keyed as ``Searcher.search`` takes them); one out of
    range is argparse's error (exit 2). Whether they apply (a hybrid search) is the job's to check."""
    if args.rrf_k is not None and args.rrf_k < 1:
        parser.error("--rrf-k must be >= 1")
    if args.text_weight is not None and not 0.0 <= args.text_weight <= 1.0:
        parser.error("--text-weight must be between 0 and 1")
    given = (("rrf_k", args.rrf_k), ("text_weight", args.text_weight))
    return {name: value for name, value in given if value is not None}


def report(result, summary_json) -> None:
    """Print a job's result (its ``format()``), and its JSON to stdout (``-``) or a file when asked."""
    print(result.format())
    if summary_json == "-":
        print(result.to_json(), flush=True)
    elif summary_json:
        with open(summary_json, "w") as fh:
            fh.write(result.to_json() + "\n")


def fail(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr (credentials redacted) and return the job's exit code."""
    if os.environ.get("EMBEDPIPE_DEBUG"):
        traceback.print_exception(exc)
    name = type(exc).__name__
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    from connectors.storage import redact_environment

    message = redact_environment(message)  # an error line never shows a credential
    from connectors.errors import UserError

    # A config or input to fix, found before the run started: exit 2. The same error raised inside a
    # Ray worker arrives as RayTaskError(<it>) after work ran: a failed run, exit 1.
    if isinstance(exc, UserError) and not name.startswith("RayTaskError"):
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"error: {name}: {message} (set EMBEDPIPE_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1
