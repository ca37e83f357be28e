#!/usr/bin/env bash
# The whole test suite: lint, types, import contracts, then pytest.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy --strict saltline.crypto"; mypy --strict -p saltline.crypto
echo "== mypy saltline.server; mypy --strict saltline.client_sdk"; mypy -p saltline.server; mypy --strict -p saltline.client_sdk
echo "== import-linter"; lint-imports
# One worker per core (SALTLINE_TEST_WORKERS overrides; 0 runs in this process). A file's tests stay
# on one worker (module fixtures are shared); every worker starts its own PostgreSQL, Redis, nginx.
echo "== pytest"; python -m pytest -q -p no:cacheprovider -n "${SALTLINE_TEST_WORKERS:-auto}" --dist loadfile \
  --durations=15 "$@"
