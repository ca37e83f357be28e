#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with every dependency.
# Idempotent and quiet when nothing changed; used by scripts/serve.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.saltline-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[server,dev,postgres,redis,docs]'
  touch "$stamp"
fi
