# `make demo` and `make test` create .venv from nothing (idempotently), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

.PHONY: venv demo test lint bench-etl bench-als bench-recs bench-loader bench-quality bench-train bench-score native-blas clean-venv

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

# The comparison library is not a recpipe dependency; it is installed only for this benchmark.
bench-als: venv
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) implicit==0.7.3
	$(BIN)/python bench/als.py

bench-recs: venv
	$(BIN)/python bench/recs_lookup.py --users 1000000

bench-loader: venv
	$(BIN)/python bench/loader.py

# bench-train reuses the MovieLens 100K samples bench-quality exports under var/quality.
bench-quality: venv
	$(BIN)/python bench/quality.py

bench-train: venv
	$(BIN)/python bench/train.py

bench-score: venv
	.venv/bin/python bench/score.py

# Optional: Debian's OpenBLAS/LAPACK let MLlib use native BLAS (JNIBLAS) instead of Java.
native-blas:
	apt-get install -y -q libopenblas0 liblapack3

clean-venv:
	rm -rf $(VENV)
