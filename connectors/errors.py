"""The two base classes of the errors this project raises on purpose: fix the input, or resume the run.

Both live here, at the bottom of the layers, so that connectors and pipelines subclass the same two and
a caller can catch each kind whatever module raised it.
"""

from __future__ import annotations

__all__ = ["RunError", "UserError"]


class UserError(ValueError):
    """A configuration, input or request that cannot run as given; the message names the key, file,
    row or column. Every job prints it as one line and exits with code 2 (jobs/args.py); anything
    else is a failure of the run (exit 1)."""


class RunError(RuntimeError):
    """The run stopped, or its check failed, for a reason outside its config and input (another writer,
    a lost lease, lost rows, data files gone, an id found twice): what it committed stays consistent,
    and the job run again resumes the run (or, for duplicate ids, an upsert resolves them). A failure
    of the run: the jobs exit with code 1 (jobs/args.py)."""
