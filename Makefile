# README command 1: `make run`; README command 2: `make test`.
PY := .venv/bin/python
export ILDREVIEW_VAR_DIR ?= $(CURDIR)/var

.PHONY: venv run test lint format migrate

venv:
	@bash scripts/bootstrap.sh

migrate: venv
	@$(PY) manage.py migrate --noinput

run: venv
	@bash scripts/run_local.sh

test: venv
	@bash scripts/ensure_chromium.sh
	@bash scripts/run_tests.sh

lint: venv
	@.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: venv
	@.venv/bin/ruff format . && .venv/bin/ruff check --fix .
