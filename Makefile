# `make demo` and `make test` create .venv from nothing (idempotently), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

.PHONY: venv demo test lint bench-etl clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[train,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/recpipe demo

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q -ra

bench-etl: venv
	$(BIN)/python bench/etl.py

clean-venv:
	rm -rf $(VENV)
