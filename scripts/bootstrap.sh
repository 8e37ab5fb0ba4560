#!/usr/bin/env bash
# Create or update the local virtual environment in .venv. Fast when nothing changed: a stamp
# file records the hash of the dependency files and the install is skipped when it matches.
# Order matters: torch/torchvision pinned first, then numpy + build tools, then pyradiomics built
# without isolation against that numpy (it has no wheel), then everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.ildreview-deps
want=$(cat requirements.txt scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

PIP="$VENV/bin/pip"
"$PIP" install --quiet --upgrade pip setuptools wheel versioneer numpy
"$PIP" install --quiet torch==2.14.1 torchvision==0.29.1
"$PIP" install --quiet --no-build-isolation pyradiomics
"$PIP" install --quiet -r requirements.txt
echo "$want" > "$STAMP"
