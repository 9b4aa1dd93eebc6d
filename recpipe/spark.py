"""The one place a SparkSession is built, from ``Config.spark`` and ``paths.root``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from recpipe.config import Config

log = logging.getLogger(__name__)


def session_conf(config: Config) -> dict[str, str]:
    """Spark settings for ``config``: embedded-default paths under ``paths.root``, then overrides.

    Metastore, warehouse, scratch space and derby.log all live under the root, so nothing is
    written to the working directory. Entries in ``spark.conf`` win over everything else.
    """
    root = config.root
    spark = config.spark
    metastore = root / "metastore"
    conf = {
        "spark.app.name": spark.app_name,
        "spark.master": spark.master,
        "spark.driver.memory": spark.driver_memory,
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.ui.enabled": str(spark.ui).lower(),
        # Stages log their own progress; Spark's console bars would interleave with it.
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        # Standard UTC-adjusted microsecond timestamps (not legacy INT96) for pyarrow readers.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Keep `ds` and other partition values as strings: "2026-11-22" would become a date.
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
        "spark.local.dir": str(root / "tmp" / "spark"),
        "spark.sql.warehouse.dir": str(root / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={metastore / 'metastore_db'};create=true"
        ),
        "spark.driver.extraJavaOptions": " ".join(
            [
                f"-Dderby.system.home={metastore}",
                f"-Dderby.stream.error.file={metastore / 'derby.log'}",
                f"-Djava.io.tmpdir={root / 'tmp' / 'jvm'}",
                "-XX:-UsePerfData",  # no hsperfdata folder in the system temp dir
            ]
        ),
    }
    if spark.hive:
        conf["spark.sql.catalogImplementation"] = "hive"
    if spark.executor_memory:
        conf["spark.executor.memory"] = spark.executor_memory
    if spark.executor_cores:
        conf["spark.executor.cores"] = str(spark.executor_cores)
    if spark.executor_instances:
        conf["spark.executor.instances"] = str(spark.executor_instances)
    conf.update(spark.conf)
    return conf


def get_spark(config: Config) -> SparkSession:
    """Return the active session, or build one from ``config``.

    Session-wide settings (master, memory, metastore) are fixed when the JVM starts; a session
    that already runs (under spark-submit, or in tests) is reused as it is.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = session_conf(config)
    for key in ("spark.local.dir",):
        Path(conf[key]).mkdir(parents=True, exist_ok=True)
    for folder in ("metastore", "tmp/jvm"):
        (config.root / folder).mkdir(parents=True, exist_ok=True)
    if config.spark.master.startswith("local"):
        # Local Python workers (mapInArrow, TorchDistributor) must run this interpreter, which
        # has numpy/pandas/torch; PySpark otherwise starts `python3` from PATH. The driver
        # reads only this variable (not spark.pyspark.python); clusters set their own.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    if config.spark.hive:
        builder = builder.enableHiveSupport()
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(config.spark.log_level)
    log.info("spark %s started: master=%s", session.version, session.sparkContext.master)
    return session
