"""The errors' two kinds: every error a user fixes is a UserError (exit 2), every stopped run a RunError."""

from __future__ import annotations

import pytest

from connectors.errors import RunError, UserError
from connectors.lance.commits import ConcurrentWriteError, MissingFilesError
from connectors.lance.lease import LeaseLostError, TableBusyError
from connectors.lance.table import SinkError
from jobs.args import fail
from pipelines.config import ConfigError
from pipelines.lineage import LineageMismatchError
from pipelines.maintenance import DuplicateIdsError
from pipelines.run.checkpoints import IncompleteRunError


@pytest.mark.parametrize(
    "error", [ConcurrentWriteError, MissingFilesError, LeaseLostError, IncompleteRunError, DuplicateIdsError]
)
def test_a_stopped_run_is_a_run_error_and_exits_1(error):
    assert issubclass(error, RunError) and issubclass(error, RuntimeError) and not issubclass(error, UserError)
    assert fail(error("stopped")) == 1


@pytest.mark.parametrize("error", [SinkError, TableBusyError, ConfigError, LineageMismatchError])
def test_an_error_to_fix_is_a_user_error_and_exits_2(error):
    assert issubclass(error, UserError) and not issubclass(error, RunError)
    assert fail(error("fix it")) == 2
