#!/usr/bin/env bash
# Run the Saltline server on the embedded SQLite default (data in ./saltline-data).
# Usage: bash scripts/serve.sh [saltline serve options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/saltline serve "$@"
