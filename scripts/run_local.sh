#!/usr/bin/env bash
# README command 1 (after the venv exists): migrate, seed the demo library on an empty install,
# then start the web server AND a real Celery worker (queues gpu,cpu) on the embedded broker
# (kombu filesystem transport under var/broker unless CELERY_BROKER_URL is set).
# Ctrl-C (or either process exiting) stops both.
#
# The app runs as a user meets it: DEBUG off (no debug page ever reaches the browser), static
# files collected and served by WhiteNoise. Only what plain http://127.0.0.1 needs is relaxed:
# no HTTPS redirect, HSTS or secure-only cookies. Every variable can be overridden from the
# environment (.env.example).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

# A secret kept in an ignored local file, made on the first run: the same key on every run, so
# sessions (SECRET_KEY) and patient pseudonyms (ILDREVIEW_PSEUDONYM_KEY) stay valid.
local_secret() {
  if [ ! -s "$1" ]; then
    (umask 077 && $PY -c 'import secrets; print(secrets.token_urlsafe(50))' >"$1")
  fi
  cat "$1"
}
export DEBUG="${DEBUG:-false}"
export SECRET_KEY="${SECRET_KEY:-$(local_secret .local-secret-key)}"
export ILDREVIEW_PSEUDONYM_KEY="${ILDREVIEW_PSEUDONYM_KEY:-$(local_secret .local-pseudonym-key)}"
export SECURE_SSL_REDIRECT="${SECURE_SSL_REDIRECT:-false}"
export SESSION_COOKIE_SECURE="${SESSION_COOKIE_SECURE:-false}"
export CSRF_COOKIE_SECURE="${CSRF_COOKIE_SECURE:-false}"
export SECURE_HSTS_SECONDS="${SECURE_HSTS_SECONDS:-0}"

$PY manage.py collectstatic --noinput --verbosity 0
$PY manage.py migrate --noinput
# The demo library (empty install only): the real public CT series under ILDREVIEW_REAL_DATA
# (../shared/datasets) when present, else synthetic phantoms; ILDREVIEW_DEMO_LIBRARY=real|phantoms
# chooses.
$PY manage.py setup_demo
# A retrieval model trained on the demo library (first run only; later runs just check that
# every approved case is embedded).
$PY manage.py bootstrap_model

# Each child in its own process group (job control) so that cleanup can stop the whole group
# (runserver's autoreloader child, the worker's pool processes) and Ctrl-C reaches only us.
set -m
pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "ildreview stopped."
}
trap cleanup INT TERM EXIT

.venv/bin/celery -A ildreview worker -Q gpu,cpu --concurrency 1 -n "local@%h" \
  --without-gossip --without-mingle --loglevel "${WORKER_LOG_LEVEL:-INFO}" &
pids+=($!)
echo "Starting ildreview at http://127.0.0.1:8000 (worker pid ${pids[0]})"
$PY manage.py runserver 127.0.0.1:8000 &
pids+=($!)
# Return (and clean up) as soon as either process exits.
wait -n "${pids[@]}" || true
