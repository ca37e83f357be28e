#!/usr/bin/env bash
# Run the Saltline server on the embedded SQLite default (data in ./saltline-data).
# Migrates the database first (idempotent), then serves.
# Usage: bash scripts/serve.sh [saltline serve options, e.g. --port 9000 --database-url ...]
#        bash scripts/serve.sh demo   (runs `saltline demo` instead: a throw-away server and three devices)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [[ "${1:-}" == demo ]]; then
  exec .venv/bin/saltline demo "${@:2}"
fi
db_args=()
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --database-url | --data-dir) j=$((i + 1)); db_args+=("${!i}" "${!j}") ;;
    --database-url=* | --data-dir=*) db_args+=("${!i}") ;;
  esac
done
.venv/bin/saltline db upgrade "${db_args[@]}"
exec .venv/bin/saltline serve "$@"
