"""One command for every job: ``embedpipe index|query|evaluate|maintain|check-model [options]``.

``embedpipe index ...`` is ``python -m jobs.index ...`` (the cluster files, the Airflow DAG and
``ray job submit`` use the module form, which stays); ``embedpipe <job> --help`` lists a job's options.
"""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "index": "embed a Parquet corpus into a LanceDB table and index it",
    "query": "search a table with its own model",
    "evaluate": "retrieval quality on a BEIR-layout test set",
    "maintain": "index upkeep, housekeeping and the duplicate-id check of a table",
    "check-model": "a model's chain and its vectors beside sentence-transformers', before indexing with it",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: embedpipe {" + ",".join(JOBS) + "} [options]\n")
        for name, what in JOBS.items():
            print(f"  {name:<12} {what}")
        return 0 if argv else 2
    if argv[0] not in JOBS:
        print(f"embedpipe: unknown job {argv[0]!r}; choose one of {', '.join(JOBS)}", file=sys.stderr)
        return 2
    return importlib.import_module(f"jobs.{argv[0].replace('-', '_')}").main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
