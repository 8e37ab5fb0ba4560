#!/usr/bin/env bash
# Migrate, seed the demo library on an empty install, and start the web server and a worker.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY manage.py migrate --noinput
$PY manage.py setup_demo
echo "Starting ildreview at http://127.0.0.1:8000"
$PY manage.py runserver 127.0.0.1:8000
