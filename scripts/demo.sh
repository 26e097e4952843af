#!/usr/bin/env bash
# Index the bundled Wikipedia sample on a local Ray with the packaged MiniLM, then query it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
.venv/bin/python -m jobs.index --config jobs/configs/demo.yaml "$@"
for q in "how do vaccines protect against disease" "the planets of the solar system" "a painter of the Italian Renaissance"; do
  .venv/bin/python -m jobs.query --uri out/lancedb --table wiki -k 3 "$q"
done
