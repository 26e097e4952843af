#!/usr/bin/env bash
# `ray job submit` on a cluster that has nothing but Ray: build .venv-ray (only ray[default]), start the
# test's Ray head from it, and run tests/integration/test_ray_job_submit.py. Ray then pip-installs every
# package of infra/ray/runtime_env.yaml into the job's virtualenv from the package index (about 1-2 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
ray_pin=$(grep -E '^ray==' constraints.txt)
[ -x .venv-ray/bin/ray ] || {
  "$PYTHON" -m venv .venv-ray
  .venv-ray/bin/python -m pip install -q -c constraints.txt "ray[default]==${ray_pin#ray==}"
}
export HF_HUB_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 EMBEDPIPE_RAY_HEAD_PYTHON="$PWD/.venv-ray/bin/python"
exec .venv/bin/python -m pytest -q tests/integration/test_ray_job_submit.py "$@"
