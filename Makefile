# Each target creates or reuses the local virtualenv, so on a fresh machine
# `make demo` and `make test` are the whole set-up.
# The virtualenv's interpreter: the distribution's python3 when it is 3.11 or newer and can make
# a virtualenv (distributions build CPython with profile-guided and link-time optimisation; a
# source build without them, as pyenv makes by default, costs the pipeline 10-15 % more CPU, see
# benchmarks/README.md), else the python3 on PATH. `make PYTHON=...` picks another.
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' \
	>/dev/null 2>&1 && echo /usr/bin/python3 || echo python3)
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
