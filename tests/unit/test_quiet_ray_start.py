"""The job's own Ray starts without Ray's token notice and Lance's fork notice, and nothing else is hidden.

No Ray is started: the notices are raised the way Ray and Lance raise them (the same logger and call
path, a real fork through subprocess with a preexec_fn as ray.init starts its programs).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import lance  # noqa: F401 - registers the fork hook that warns
import pytest

from pipelines.run.quiet import LANCE_FORK_NOTICE, LANCEDB_FORK_NOTICE, RAY_TOKEN_LOGGER, quiet_ray_start

ROOT = Path(__file__).resolve().parents[2]
NOTICE = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."


def enable_token_auth_by_default():  # named as Ray's function for a cluster that ray.init() starts
    logging.getLogger(RAY_TOKEN_LOGGER).warning(NOTICE)


def maybe_enable_token_auth_if_token_available():  # Ray's function when it joins an existing cluster
    logging.getLogger(RAY_TOKEN_LOGGER).warning(NOTICE)


def _fork_and_exec():
    subprocess.run(["true"], preexec_fn=lambda: None, check=True)


class _Kept(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def token_log():
    logger, kept = logging.getLogger(RAY_TOKEN_LOGGER), _Kept()
    logger.addHandler(kept)  # on Ray's logger itself: Ray's "ray" logger may not pass records to the root
    yield kept.messages
    logger.removeHandler(kept)


def test_the_token_notice_of_a_new_local_cluster_is_dropped_only_inside(token_log):
    disabled = "Token authentication is disabled for this Ray cluster."
    with quiet_ray_start():
        enable_token_auth_by_default()
        maybe_enable_token_auth_if_token_available()  # joining someone's cluster: still shown
        logging.getLogger(RAY_TOKEN_LOGGER).warning(disabled)  # a real warning: still shown
    enable_token_auth_by_default()  # after the block: shown
    assert token_log == [NOTICE, disabled, NOTICE]
    assert not logging.getLogger(RAY_TOKEN_LOGGER).filters


def test_the_lance_fork_notice_is_dropped_only_inside():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_ray_start():
            _fork_and_exec()
            warnings.warn("another warning", UserWarning)
        _fork_and_exec()  # a fork outside the job's ray.init still warns
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and messages[0] == "another warning", messages
    assert messages[1].startswith(LANCE_FORK_NOTICE), messages


LANCEDB_CHILD = """
import subprocess, sys, warnings
import lancedb.background_loop  # noqa: F401 - registers the hook that warns in a forked child
from pipelines.run.quiet import quiet_ray_start
with quiet_ray_start():
    subprocess.run(["true"], preexec_fn=lambda: None, check=True)  # as ray.init starts its programs
    warnings.warn("another warning", UserWarning)
print("outside", file=sys.stderr, flush=True)
subprocess.run(["true"], preexec_fn=lambda: None, check=True)  # a fork outside the job's ray.init
"""


def test_the_lancedb_fork_notice_of_a_forked_child_is_dropped_only_inside():
    # The notice is raised in the child after the fork and printed there, to the stderr it shares with
    # the parent: only a separate process shows what a user would see.
    done = subprocess.run([sys.executable, "-c", LANCEDB_CHILD], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    inside, outside = done.stderr.split("outside")
    assert LANCEDB_FORK_NOTICE not in inside and "another warning" in inside, done.stderr
    assert outside.count(LANCEDB_FORK_NOTICE) == 1, done.stderr
