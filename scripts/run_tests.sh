#!/usr/bin/env bash
# Run the whole test suite. PostgreSQL when CI=true or DATABASE_URL is set, SQLite otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = "true" ] && [ -z "${DATABASE_URL:-}" ]; then
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
fi
# One BLAS/torch thread per process: on a 2-core machine, oversubscribed threads made the
# torch-heavy tests (and workers they start) many times slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
