# `make demo` and `make test` create .venv from nothing (idempotently), then run.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt
# Airflow lives in its own environment: its Spark provider installs pyspark-client, which would
# overwrite full pyspark. Its DAG calls the main environment's spark-submit.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
AIRFLOW_CONSTRAINTS := requirements/airflow-constraints.txt
AIRFLOW_PACKAGES := apache-airflow==3.3.2 apache-airflow-providers-apache-spark==6.3.4 \
	pytest==9.2.0 pytest-timeout==2.4.0
# Horovod + Petastorm need numpy 1.x / pyarrow 12, which pyspark 4.3 refuses: their own trainer
# environment (train.launcher=horovod, train.loader=petastorm). Horovod is built once, then cached.
LEGACY_VENV := .venv-legacy
LEGACY_STAMP := $(LEGACY_VENV)/.installed

.PHONY: debian-deps venv airflow-venv legacy-venv test-legacy test-airflow dist demo test lint bench-etl bench-als bench-recs bench-loader bench-quality bench-train bench-score bench-scale bench-warm bench-optimizer bench-checkpoint bench-ranking bench-bootstrap bench-din-scoring bench-context native-blas clean-venv

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[train,tune,tracking,dev]'
	touch $(STAMP)

venv: $(STAMP)

$(AIRFLOW_STAMP): $(AIRFLOW_CONSTRAINTS)
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q -c $(AIRFLOW_CONSTRAINTS) $(AIRFLOW_PACKAGES)
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

$(LEGACY_STAMP): requirements/legacy.txt requirements/legacy_env.sh
	PYTHON=$(PYTHON) requirements/legacy_env.sh $(LEGACY_VENV)
	touch $(LEGACY_STAMP)

legacy-venv: $(LEGACY_STAMP)

demo: venv
	$(BIN)/recpipe demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy recpipe

# Debian packages of the services the tests start themselves: PostgreSQL (the shared Hive
# metastore) and its JDBC driver. Installed only when missing (as root, else through sudo).
DEBIAN_TEST_PACKAGES := postgresql libpostgresql-jdbc-java
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
debian-deps:
	@if [ -f /usr/share/java/postgresql.jar ] && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; \
	then echo "debian-deps: $(DEBIAN_TEST_PACKAGES) present"; \
	else export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q --no-install-recommends $(DEBIAN_TEST_PACKAGES) || \
	  { $(SUDO) apt-get update -q && \
	    $(SUDO) apt-get install -y -q --no-install-recommends $(DEBIAN_TEST_PACKAGES); }; fi

test: lint airflow-venv legacy-venv debian-deps
	RECPIPE_LEGACY_ENV=$(abspath $(LEGACY_VENV)) $(BIN)/python -m pytest -q -ra --durations=25
	$(MAKE) test-airflow
	$(MAKE) test-legacy

# For a cluster: the package as a zip for spark-submit --py-files (RECPIPE_PY_FILES), and the
# executors' Python environment (recpipe + dependencies + torch, no pyspark) packed with
# venv-pack for spark.archives (RECPIPE_ENV_ARCHIVE, spark.python_env), with its .sha256.
DIST_EXTRAS ?= train
dist: venv
	mkdir -p dist && rm -f dist/recpipe.zip
	$(BIN)/python -m zipfile -c dist/recpipe.zip recpipe
	$(BIN)/python -m recpipe.executor_env dist/recpipe-env.tar.gz --source . \
		--extras '$(DIST_EXTRAS)' --constraints $(CONSTRAINTS)

# The DAG's tests run in the Airflow environment (real DagBag, dag.test() with spark-submit).
test-airflow: venv airflow-venv
	$(AIRFLOW_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider --durations=15 tests_airflow

# The Petastorm loader and Horovod collectives, tested inside their own environment.
test-legacy: legacy-venv
	$(LEGACY_VENV)/bin/python -m pytest -q -ra -p no:cacheprovider tests_legacy

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

bench-context: venv
	$(BIN)/python bench/context.py

bench-score: venv
	$(BIN)/python bench/score.py

# The whole chain at growing sizes with a 1 GB driver (SCALE_SIZES: event counts).
SCALE_SIZES ?= 1000000 5000000
bench-scale: venv
	$(BIN)/python bench/scale.py --sizes $(SCALE_SIZES)

bench-warm: venv
	$(BIN)/python bench/warm_start.py

bench-optimizer: venv
	$(BIN)/python bench/optimizer.py

bench-checkpoint: venv
	$(BIN)/python bench/checkpoint.py

bench-ranking: venv
	$(BIN)/python bench/ranking.py

bench-bootstrap: venv
	$(BIN)/python bench/bootstrap.py

bench-din-scoring: venv
	$(BIN)/python bench/din_scoring.py

# Optional: Debian's OpenBLAS/LAPACK let MLlib use native BLAS (JNIBLAS) instead of Java.
native-blas:
	apt-get install -y -q libopenblas0 liblapack3

clean-venv:
	rm -rf $(VENV) $(AIRFLOW_VENV) $(LEGACY_VENV)
