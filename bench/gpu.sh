#!/usr/bin/env bash
# GPU check (not run in CI; needs a CUDA machine): the throughput benchmark with the HF backend in
# float32 and bf16 on the GPU, plus vLLM when installed, with GPU utilisation sampled alongside.
# Writes out/bench/gpu.json and out/bench/gpu_util.csv.
#   bash bench/gpu.sh [DOCS]
set -euo pipefail
cd "$(dirname "$0")/.."
DOCS=${1:-20000}
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mkdir -p out/bench  # results (git-ignored)
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > out/bench/gpu_util.csv &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT
# The job's encoder actor takes the GPU: one actor, one GPU, bf16 where asked.
$PY bench/throughput.py --docs "$DOCS" --dtypes float32,bfloat16 --device cuda \
  --job-set compute.gpus_per_actor=1 --job-set model.device=cuda --job-set compute.batch_tokens=131072 \
  --out out/bench/gpu.json
kill $SMI 2>/dev/null || true
awk -F', ' '{u+=$1; if ($1>m) m=$1; n++} END {printf "GPU utilisation: mean %.0f%%, max %d%% over %d samples\n", u/n, m, n}' out/bench/gpu_util.csv
