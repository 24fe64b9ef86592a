#!/usr/bin/env bash
# The test command: creates/reuses .venv, installs gscnn_tf[test], runs pytest.
# Extra arguments go to pytest (e.g. scripts/run_tests.sh -k canny, or --runslow).
# Tests run in parallel worker processes (pytest-xdist), one per core up to 4
# (GSCNN_TEST_WORKERS=N to choose; 0 = in this process). A test file stays in one worker
# (--dist loadfile), so its module fixtures are built once and the docs blocks run in order.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/bootstrap_venv.sh" | tail -n 1)
cd "$root"
export CUDA_VISIBLE_DEVICES="" TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
cores=$(nproc 2>/dev/null || echo 1)
workers=${GSCNN_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec "$py" -m pytest -q "${parallel[@]}" "$@"
