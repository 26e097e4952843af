"""What every job does with an error: one clear line on stderr and a non-zero exit code."""

from __future__ import annotations

import os
import sys
import traceback

# Errors a user fixes by changing the config or the input: exit 2, nothing ran.
_USER_ERRORS = ("ConfigError", "SourceError", "SinkError", "LineageMismatchError", "ModelNotFoundError",
                "StorageError", "DatasetError")


def fail(exc: BaseException) -> int:
    if os.environ.get("EMBEDPIPE_DEBUG"):
        traceback.print_exception(exc)
    name = type(exc).__name__
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    from connectors.storage import redact_environment

    message = redact_environment(message)  # an error line never shows a credential
    if name in _USER_ERRORS:
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"error: {name}: {message} (set EMBEDPIPE_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1
