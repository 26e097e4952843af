#!/usr/bin/env bash
# Create .venv with the tested stack: the CPU build of torch first, then the project and its pins.
# Re-running is cheap: nothing is installed when pyproject.toml and constraints.txt are unchanged.
# On a GPU machine install the CUDA torch you want into .venv first, then run this with TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.embedpipe-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing into .venv (log: .venv/setup.log)"
  torch_pin="torch==2.13.0"; [ "${TORCH:-}" = skip ] && torch_pin=""
  {
    .venv/bin/python -m pip install --upgrade pip &&
    # One resolver run sees every pin (installing pieces separately broke s3fs/botocore before).
    .venv/bin/python -m pip install -c constraints.txt $torch_pin -e '.[dev]' &&
    # PyPI's torchvision is a CUDA build that breaks beside the CPU torch; nothing here needs it.
    { .venv/bin/python -m pip uninstall -y torchvision || true; }
  } > .venv/setup.log 2>&1 || { tail -40 .venv/setup.log; echo "setup: pip install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
