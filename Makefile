# Two entry points for a newcomer: `make run` (the whole system with a demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev,load]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/stockgate demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks.lua

clean:
	rm -rf $(VENV) .stockgate
