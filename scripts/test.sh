#!/usr/bin/env bash
# Set up .venv and run the whole test suite, tests/unit and tests/integration (real local Ray, LanceDB and
# model; a few minutes). Arguments go to pytest: `bash scripts/test.sh -m "not integration"` runs the unit
# tests only (seconds, nothing started; docs/testing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec .venv/bin/python -m pytest -q "$@"
