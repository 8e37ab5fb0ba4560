#!/usr/bin/env bash
# README command 1 (after the venv exists): migrate, seed the demo library on an empty install,
# then start the web server AND a real Celery worker (queues gpu,cpu) on the embedded broker
# (kombu filesystem transport under var/broker unless CELERY_BROKER_URL is set).
# Ctrl-C (or either process exiting) stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY manage.py migrate --noinput
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
