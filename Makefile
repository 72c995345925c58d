# Lethe — make demo | make test | make ui | make bench | make lint
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

.PHONY: demo test ui bench lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/lethe demo --contacts $(CONTACTS)

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

ui: install
	mkdir -p $(LETHE_HOME)/dagster
	DAGSTER_HOME=$(LETHE_HOME)/dagster $(BIN)/dagster dev -w workspace.yaml

bench: install-test
	$(BIN)/python -m pytest -q -m slow tests

lint: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(LETHE_HOME)
