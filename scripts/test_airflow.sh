#!/usr/bin/env bash
# Build .venv-airflow (Airflow 3.3.2 + Ray's job client, pinned by infra/airflow/constraints.txt) and run
# the DAG test: real `airflow dags test` runs of infra/airflow/dags/embedpipe_daily.py against a Ray head
# on 127.0.0.1. Re-running is cheap: nothing is installed when the requirement files have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PYTHON=${PYTHON:-python3}
venv=.venv-airflow
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
stamp=$venv/.embedpipe-setup
want=$(cat infra/airflow/requirements.txt infra/airflow/constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "test_airflow: installing into $venv (log: $venv/setup.log)"
  start=$(date +%s)
  {
    "$venv/bin/python" -m pip install --upgrade pip &&
    "$venv/bin/python" -m pip install -c infra/airflow/constraints.txt -r infra/airflow/requirements.txt
  } > "$venv/setup.log" 2>&1 || { tail -40 "$venv/setup.log"; echo "test_airflow: pip install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "test_airflow: $venv ready in $(( $(date +%s) - start ))s"
fi
# EMBEDPIPE_SETUP_ONLY=1: build .venv-airflow and stop (.ci/run does this while the main suite runs).
[ "${EMBEDPIPE_SETUP_ONLY:-0}" = 1 ] && exit 0
export HF_HUB_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 EMBEDPIPE_AIRFLOW_VENV="$PWD/$venv"
exec .venv/bin/python -m pytest -q tests/integration/test_airflow_dag.py "$@"
