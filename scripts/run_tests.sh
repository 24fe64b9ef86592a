#!/usr/bin/env bash
# The test command: creates/reuses .venv, installs gscnn_tf[test], runs pytest.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh -k canny, or --runslow).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/bootstrap_venv.sh" | tail -n 1)
cd "$root"
export CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
exec "$py" -m pytest -q "$@"
