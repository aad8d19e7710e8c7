# tidemill — every target sets up what it needs; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKERS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install chromium run up down test test-fast chaos lint format bench bench-accuracy clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "tidemill needs Python 3.11 (found %s)" % sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m tidemill.warehouse.extensions
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install tidemill with its pinned dependencies

run: $(STAMP) ## Start Prefect, the worker(s) and the replayers (WORKERS=2 for two workers); Ctrl-C stops everything
	$(BIN)/tidemill up --workers $(WORKERS)

down: $(STAMP) ## Stop whatever `make run` / `tidemill up --detach` left running
	$(BIN)/tidemill down

chromium: ## Install Debian's chromium (apt) for the report's browser test, unless there is one
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; } || \
	  echo "warning: chromium could not be installed; the browser test will be skipped"; }

test: lint chromium ## Lint and the import rules, then the whole test suite (real Prefect server, real DuckDB files)
	$(BIN)/pytest -n 2 --dist loadfile

test-fast: $(STAMP) ## The quick tests only (no Prefect server, no worker processes)
	$(BIN)/pytest -m "not slow" -q

chaos: $(STAMP) ## The chaos test at 2000 batches (~12 min; `make test` runs 100); summary in tests/chaos/results.txt
	CHAOS_BATCHES=$${CHAOS_BATCHES:-2000} CHAOS_RESULTS=tests/chaos/results.txt $(BIN)/pytest -m chaos -s tests/chaos

lint: $(STAMP) ## ruff, mypy and the import rules (import-linter contracts in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## Format and auto-fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) ## Benchmarks: full-cycle rows/s against a bare script
	$(BIN)/python benchmarks/cycle.py

# River is a benchmark-only extra (`bench` in pyproject.toml). It goes into .venv itself:
# its requirements (numpy, scipy, narwhals) are met by the pinned versions, nothing moves.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench-accuracy: $(BENCH_STAMP) ## Benchmarks: prequential accuracy and rows/s against River (~10 min)
	$(BIN)/python benchmarks/accuracy.py

clean: ## Remove the state folder (warehouse, artifacts, Prefect database)
	rm -rf .tidemill
