# Lethe — make demo | make test | make test-busy | make e2e | make ui | make bench | make slow | make lint
# Uses the active virtualenv if there is one, else creates .venv.
SHELL := /bin/bash
PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
BIN := $(VENV)/bin
export LETHE_HOME ?= $(CURDIR)/.lethe
CONTACTS ?= 10000
SCALE ?= 1m

.PHONY: demo test test-busy e2e chromium postgresql ui bench slow lint install install-test install-bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

install-bench: $(VENV)/.installed-bench

demo: install
	$(BIN)/lethe demo --contacts $(CONTACTS)

# The suite in TEST_WORKERS processes, each taking whole files (module fixtures build once).
TEST_WORKERS ?= 2
test: install-test chromium postgresql
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The whole suite while a CPU hog keeps every core busy (tests/busy.py): finds tests that
# rely on timing. RUNS=3 repeats it.
RUNS ?= 1
test-busy: install-test chromium postgresql
	for i in $$(seq $(RUNS)); do $(BIN)/python tests/busy.py -- $(MAKE) --no-print-directory test || exit 1; done

# Only the browser tests (tests/test_ui.py): dagster dev driven by Playwright.
e2e: install-test chromium
	$(BIN)/python -m pytest -q -m e2e tests

# Debian's chromium for the browser tests (Playwright's own browser download is unreachable).
# apt-get needs root, as CI has; elsewhere the browser tests skip until it is installed.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "note: no /usr/bin/chromium; 'sudo apt-get install chromium' to run tests/test_ui.py"; \
	  fi; \
	fi

# Debian's PostgreSQL server for the tests that run plans and sources on a real server
# (tests/postgres.py starts a throwaway cluster from it); without it those tests skip.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	  else \
	    echo "note: no PostgreSQL server; 'sudo apt-get install postgresql' to run its tests"; \
	  fi; \
	fi

# umask 077: what Dagster writes under LETHE_HOME/dagster is owner-only.
ui: install
	$(BIN)/python -m pipelines.instance $(LETHE_HOME)
	umask 077 && DAGSTER_HOME=$(LETHE_HOME)/dagster $(BIN)/dagster dev -w workspace.yaml

# Benchmark harness (bench/README.md): SCALE=100k|1m|10m, results in bench/results/;
# BENCH_ARGS passes more options, e.g. BENCH_ARGS="--profile enforce". Its PostgreSQL stages
# start a throwaway server from Debian's postgresql (installed as for make test).
bench: install-bench postgresql
	$(BIN)/python -m bench --scale $(SCALE) $(BENCH_ARGS)

# Tests marked slow (scale tests); pytest's exit 5 means none is collected, which is fine.
slow: install-test
	$(BIN)/python -m pytest -q -m slow tests || [ $$? -eq 5 ]

lint: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(LETHE_HOME)
