"""Shared fixtures: one session-scoped local SparkSession and per-test configs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jvm_startup import submit_opts
from pyspark.sql import SparkSession

from recpipe.config import Config, load_config
from recpipe.spark import get_spark

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# PySpark turns timestamps into naive datetimes in the Python process's zone; pin it so
# expected values can be written as UTC wall times.
os.environ["TZ"] = "UTC"
time.tzset()
# Every driver JVM of the run starts from a shared class archive (tests/jvm_startup.py): the
# short-lived ones (each spark-submit and recpipe subprocess) through SPARK_SUBMIT_OPTS, this
# session's own through _SESSION_JVM in the spark fixture.
_SESSION_JVM = submit_opts(short_lived=False)  # read before the line below changes it
os.environ["SPARK_SUBMIT_OPTS"] = submit_opts()


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """local[2], two shuffle partitions, UI off, metastore and scratch in a temp folder."""
    root = tmp_path_factory.mktemp("spark-root")
    config = load_config(
        [CONF_DIR / "base.yaml", CONF_DIR / "local.yaml"],
        [
            f"paths.root={root}",
            "spark.master=local[2]",
            "spark.shuffle_partitions=2",
            "spark.driver_memory=2g",
            "spark.log_level=ERROR",
        ],
    )
    short_lived = os.environ.get("SPARK_SUBMIT_OPTS", "")
    os.environ["SPARK_SUBMIT_OPTS"] = _SESSION_JVM
    try:
        session = get_spark(config)
    finally:
        os.environ["SPARK_SUBMIT_OPTS"] = short_lived
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a config rooted in this test's temp folder, with ``key=value`` overrides."""

    def build(*overrides: str) -> Config:
        return load_config(
            [CONF_DIR / "base.yaml", CONF_DIR / "local.yaml"],
            [f"paths.root={tmp_path / 'root'}", *overrides],
        )

    return build
