"""A job's command line (``jobs.index``, ``jobs.query``, ...) run in this process: ``main(argv)`` with its
stdout and stderr captured, its exit code returned, and the logging it set up undone.

Why: a ``python -m jobs.<name>`` subprocess costs a Python start with its imports and, for a job that
runs on Ray, a new Ray job whose workers start and import again (5-10 s on 2 cores). Where a test
checks what the job says and returns, not the process itself, ``main`` here says and returns the same
(the same argument parsing, ``fail``'s one line and exit code, ``report``'s output), on the session's
Ray (``ray_cluster``). Tests of what only a process shows (a kill, an entry point, ``ray job submit``)
keep their subprocess.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

# The loggers jobs.args.setup_logging points at the job's stderr (and stops from propagating).
JOB_LOGGERS = ("pipelines", "connectors", "jobs")


@dataclass
class JobResult:
    """What ``subprocess.run(..., capture_output=True, text=True)`` gives, for a job run in this process."""

    returncode: int
    stdout: str
    stderr: str


def run_job_main(main: Callable[[list], int], argv: Sequence[str]) -> JobResult:
    """``main(argv)`` with stdout and stderr captured; the job loggers' handlers, levels and propagation
    are put back afterwards, so later tests log as before."""
    loggers = [logging.getLogger(name) for name in JOB_LOGGERS]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
    return JobResult(code, out.getvalue(), err.getvalue())
