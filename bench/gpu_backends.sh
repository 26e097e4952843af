#!/usr/bin/env bash
# GPU check of the two encoder backends: embeds the sample corpus (3,000 documents) with hf and
# with vLLM on one GPU and prints docs/s, tokens/s and their cosine agreement.
#
#   bash bench/gpu_backends.sh                          # MiniLM (packaged), float16
#   bash bench/gpu_backends.sh --model Qwen/Qwen3-Embedding-0.6B --pooling last --dtype bfloat16
#   bash bench/gpu_backends.sh --json out/bench/gpu_backends.json
#
# Needs a Linux machine with an NVIDIA GPU (driver for CUDA 13, R580+) and PyPI access the first
# time: it builds .venv-gpu with the gpu extra (vLLM 0.33.0 and the CUDA build of torch, pins in
# constraints-gpu.txt; several GB). Set VENV to use an environment that already has them.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -c constraints-gpu.txt -e '.[gpu]'
fi
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu_backends.sh: no CUDA device visible (for a CPU smoke test: python bench/gpu_backends.py --cpu)')"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec "$VENV/bin/python" bench/gpu_backends.py "$@"
