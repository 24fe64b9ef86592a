#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv and installs gscnn_tf with its test extra.
# Usage: source-free; prints the venv's python path on the last line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${GSCNN_VENV:-$root/.venv}
python=${PYTHON:-python3.11}
stamp=$venv/.gscnn_installed
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating virtualenv $venv" >&2
  "$python" -m venv "$venv"
fi
# Reinstall only when setup.py changed since the last successful install.
want=$(sha256sum "$root/setup.py" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing gscnn_tf and dependencies into $venv (first run takes a few minutes)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -e "$root[test,litert,onnx]" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
