#!/usr/bin/env bash
# Set up .venv and run the whole test suite (real local Ray, LanceDB and model; about 2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec .venv/bin/python -m pytest -q "$@"
