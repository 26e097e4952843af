"""The job's own local Ray starts without notices its user can do nothing about; real warnings stay.

Both are filtered exactly (logger or warning category, and message) and only while the job's own
``ray.init()`` runs:

- Ray's "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt
  out" (logger ``ray._private.authentication.authentication_token_setup``, from
  ``enable_token_auth_by_default`` when ``ray.init()`` starts a new local cluster). Token
  authentication stays on: only the notice that it is on goes. The notice Ray logs when it joins an
  existing cluster, and its warning that authentication is *disabled*, still show.
- Lance's "lance is not fork-safe" (a ``UserWarning`` that ``lance/__init__.py`` raises from an
  ``os.register_at_fork`` hook) and LanceDB's "lancedb fork support is experimental" (a
  ``RuntimeWarning`` its ``background_loop`` raises in the forked child, once per child: five times
  when a process that has used LanceDB, such as ``jobs.evaluate``, starts Ray): ``ray.init()`` starts
  Ray's own programs (GCS, raylet, ...) with ``subprocess.Popen`` and a ``preexec_fn``, a fork that
  runs no Lance code before it execs. A real fork elsewhere in the job still warns.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Iterator

RAY_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster."
RAY_NEW_CLUSTER_FUNCTION = "enable_token_auth_by_default"  # Ray's path for a cluster ray.init() starts
LANCE_FORK_NOTICE = "lance is not fork-safe"
LANCEDB_FORK_NOTICE = "lancedb fork support is experimental"


class _NewClusterTokenNotice(logging.Filter):
    """Drops Ray's token-authentication notice when it comes from starting a new local cluster."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(RAY_TOKEN_NOTICE):
            return True
        frame = sys._getframe()  # a logger's filters run in the thread and call stack that logs
        while frame is not None:
            if frame.f_code.co_name == RAY_NEW_CLUSTER_FUNCTION:
                return False
            frame = frame.f_back
        return True


@contextlib.contextmanager
def quiet_ray_start() -> Iterator[None]:
    """Within the block, the two notices above are not shown; outside it nothing is filtered."""
    token_logger = logging.getLogger(RAY_TOKEN_LOGGER)
    token_filter = _NewClusterTokenNotice()
    token_logger.addFilter(token_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LANCE_FORK_NOTICE, category=UserWarning, module="lance")
            # Raised in the child, which inherits this filter; its location is subprocess.py (stacklevel 2).
            warnings.filterwarnings("ignore", message=LANCEDB_FORK_NOTICE, category=RuntimeWarning)
            yield
    finally:
        token_logger.removeFilter(token_filter)


def init_own_ray(**ray_init_kwargs) -> None:
    """``ray.init(**ray_init_kwargs)`` for the job's own Ray, without the notices above."""
    import ray

    with quiet_ray_start():
        ray.init(**ray_init_kwargs)
