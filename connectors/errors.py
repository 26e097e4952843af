"""The one base class of errors a user fixes by changing the config or the input (the jobs exit 2)."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A configuration, input or request that cannot run as given; the message names the key, file,
    row or column. Every job prints it as one line and exits with code 2 (jobs/args.py); anything
    else is a failure of the run (exit 1)."""
