#!/usr/bin/env bash
# Run the whole test suite. PostgreSQL when CI=true or DATABASE_URL is set, SQLite otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = "true" ] && [ -z "${DATABASE_URL:-}" ]; then
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
