# edgesync: `make demo` and `make test` work from a fresh clone with nothing installed by hand.
# They create (or refresh) a virtualenv in .venv and install the project with what it needs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.edgesync-installed
DURATION ?= 0
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean help

help:
	@echo "make demo [DURATION=60]  run a local cloud + 2 edges (Ctrl-C to stop)"
	@echo "make test                lint, type-check and run the whole test suite"
	@echo "make bench               run the dispatch benchmark (JSON on stdout)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cloudcore.demo --duration $(DURATION)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/dispatch.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
