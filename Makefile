# Each target creates or reuses the local virtualenv, so on a fresh machine
# `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dps run examples/quickstart

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

test: lint
	$(BIN)/pytest -q --durations=15

bench: $(STAMP)
	$(BIN)/dps bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
