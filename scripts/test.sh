#!/usr/bin/env bash
# Set up .venv and run the test suite, tests/unit and tests/integration (real local Ray, LanceDB and model;
# 22-25 minutes on an Intel Xeon 2 vCPU, 2026-12-07; docs/testing.md has each tier's time). Arguments go to
# pytest: `bash scripts/test.sh -m "not integration"` runs the unit tests only (under a minute, nothing
# started; docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Lint and format first (ruff, configured in pyproject.toml): seconds, and a clear line when it fails.
.venv/bin/ruff check --quiet . && .venv/bin/ruff format --check --quiet . || {
  echo "test: ruff found problems (fix: .venv/bin/ruff check --fix . && .venv/bin/ruff format .)" >&2; exit 1; }
# Tests marked slow (regression tests at sizes that take minutes each) run with EMBEDPIPE_SLOW=1;
# CI leaves them out to stay under 30 minutes (docs/testing.md lists them).
slow=(-m "not slow"); [ "${EMBEDPIPE_SLOW:-0}" = 1 ] && slow=()
exec .venv/bin/python -m pytest -q --durations=15 "${slow[@]}" "$@"
