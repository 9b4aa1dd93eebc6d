"""The one place a SparkSession is built, from ``Config.spark`` and ``paths.root``.

Two cases. When recpipe starts the JVM itself (``recpipe clean``, tests, the demo), config
builds the whole session: master, memory, scratch space and the embedded metastore, all under
``paths.root``. When a launcher started it (``spark-submit``, an Airflow Spark connection, a
notebook's cluster), the launcher owns the cluster: recpipe never sets the master, deploy mode,
driver or executor resources or ``spark.local.dir``, and every setting the launcher gave wins
over config.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession

from recpipe import storage
from recpipe.config import Config
from recpipe.errors import RecpipeError, java_error_line
from recpipe.executor_env import ALIAS, EXECUTOR_PYTHON, check_archive, split_archive_spec
from recpipe.layout import jvm_tmp_dir, metastore_dir, spark_local_dir, warehouse_dir
from recpipe.spark_progress import log_progress

log = logging.getLogger(__name__)

# Fixed by whoever starts the driver JVM and asks the cluster manager for executors.
LAUNCHER_KEYS = frozenset(
    {
        "spark.master",
        "spark.submit.deployMode",
        "spark.cores.max",
        "spark.local.dir",
        "spark.driver.memory",
        "spark.driver.cores",
        "spark.driver.memoryOverhead",
        "spark.driver.extraJavaOptions",
        "spark.driver.extraClassPath",
        "spark.driver.extraLibraryPath",
        "spark.executor.memory",
        "spark.executor.cores",
        "spark.executor.instances",
        "spark.executor.memoryOverhead",
    }
)
LAUNCHER_PREFIXES = (
    "spark.dynamicAllocation.",
    "spark.executor.resource.",
    "spark.driver.resource.",
)
# Any of these means a metastore/warehouse is configured elsewhere: no embedded Derby then.
METASTORE_KEYS = (
    "spark.sql.warehouse.dir",
    "spark.hadoop.hive.metastore.uris",
    "spark.hadoop.javax.jdo.option.ConnectionURL",
)


class SparkStartError(RecpipeError):
    """The Spark session could not be started (bad master, unreachable cluster, bad setting)."""


def is_launcher_key(key: str) -> bool:
    """Whether ``key`` belongs to the launcher (master, deploy mode, resources, local dirs)."""
    return key in LAUNCHER_KEYS or key.startswith(LAUNCHER_PREFIXES)


def launcher_started_jvm(environ: Mapping[str, str]) -> bool:
    """Whether a launcher (spark-submit) already started the driver JVM for this process."""
    # spark-submit's PythonRunner starts the JVM first and hands Python its gateway port in this
    # variable; pyspark itself uses it to decide between connecting and launching a JVM.
    return "PYSPARK_GATEWAY_PORT" in environ


def _embedded_metastore(config: Config) -> dict[str, str]:
    metastore = metastore_dir(config.local_root)
    return {
        "spark.sql.warehouse.dir": warehouse_dir(config.root).uri,
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={metastore / 'metastore_db'};create=true"
        ),
    }


# How long a command waits for the embedded metastore's previous holder to let go.
METASTORE_GRACE_SECONDS = 15.0


def check_embedded_metastore_free(
    conf: Mapping[str, str], grace_seconds: float = METASTORE_GRACE_SECONDS
) -> None:
    """Refuse to start when another process has the embedded Derby metastore open.

    Derby lets one process at a time boot a database and holds an OS lock on its ``dbex.lck``
    while it does; a second JVM would fail deep in Hive with a page of Java traces. Probing
    that lock (taken and released at once) turns it into one line before any JVM starts. The
    probe retries for ``grace_seconds``: the previous command of a chain has exited while
    its JVM is still shutting down (seen when ``vocab`` followed ``clean`` at once).
    """
    url = conf.get("spark.hadoop.javax.jdo.option.ConnectionURL", "")
    found = re.match(r"jdbc:derby:;databaseName=([^;]+)", url)
    if found is None:
        return
    database = Path(found.group(1))
    deadline = time.monotonic() + grace_seconds
    while not _lock_free(database / "dbex.lck"):
        if time.monotonic() >= deadline:
            raise SparkStartError(
                f"the embedded metastore {database} is open in another process (Derby allows "
                "one at a time): wait for that run to end, give this one its own paths.local, "
                "or set a shared metastore in spark.conf (spark.hadoop.hive.metastore.uris)"
            )
        time.sleep(0.25)


def _lock_free(lock_file: Path) -> bool:
    """Whether no process holds the OS lock on ``lock_file`` (a missing file: free)."""
    try:
        handle = os.open(lock_file, os.O_RDWR)
    except OSError:
        return True  # not created yet (or unreadable: Derby itself will say so)
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(handle)  # closing releases the probe's lock
    return True


def session_conf(config: Config, launcher_conf: Mapping[str, str] | None = None) -> dict[str, str]:
    """Spark settings recpipe asks for; ``launcher_conf`` is what a launcher already set.

    Without a launcher: master, memory, scratch space, metastore, warehouse and derby.log all
    live under the root, so nothing is written to the working directory; ``spark.conf`` wins
    over the shortcuts. With a launcher: launcher-owned keys (see :func:`is_launcher_key`) are
    dropped, every key the launcher set keeps its value, and the embedded metastore is used only
    when neither side configured one.
    """
    spark = config.spark
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
        # Parquet pages carry CRC32s (parquet-mr writes them); checking them on read turns a
        # damaged or edited lake file into an error instead of wrong rows.
        "spark.hadoop.parquet.page.verify-checksum.enabled": "true",
        "spark.local.dir": str(spark_local_dir(config.local_root)),
        # No broadcast chosen by size: a broadcast is collected on the driver, and Spark sizes
        # a table by its compressed Parquet bytes, about a tenth of the hash table it builds.
        # At 20M events the 457k-user vocab (5 MB of Parquet) was broadcast and ran a 1 GB
        # driver out of memory. recpipe broadcasts item-sized tables by hint (F.broadcast);
        # tables that grow with users are joined by shuffle. spark.conf may set a threshold.
        "spark.sql.autoBroadcastJoinThreshold": "-1",
    }
    if spark.executor_memory:
        conf["spark.executor.memory"] = spark.executor_memory
    if spark.executor_cores:
        conf["spark.executor.cores"] = str(spark.executor_cores)
    if spark.executor_instances:
        conf["spark.executor.instances"] = str(spark.executor_instances)
    if spark.hive:
        conf["spark.sql.catalogImplementation"] = "hive"
    conf.update(spark.conf)
    given = dict(launcher_conf or {})
    if not any(key in conf or key in given for key in METASTORE_KEYS):
        conf.update(_embedded_metastore(config))
    if launcher_conf is None:
        metastore = metastore_dir(config.local_root)
        conf["spark.driver.extraJavaOptions"] = " ".join(
            [
                f"-Dderby.system.home={metastore}",
                f"-Dderby.stream.error.file={metastore / 'derby.log'}",
                f"-Djava.io.tmpdir={jvm_tmp_dir(config.local_root)}",
                "-XX:-UsePerfData",  # no hsperfdata folder in the system temp dir
                conf.get("spark.driver.extraJavaOptions", ""),
            ]
        ).strip()
        return conf
    ignored = sorted(k for k in conf if is_launcher_key(k) and given.get(k) != conf[k])
    if ignored:
        log.info("the launcher owns %s: config values ignored", ", ".join(ignored))
    return {k: v for k, v in conf.items() if not is_launcher_key(k) and k not in given}


def _launcher_conf() -> dict[str, str]:
    """Settings of the JVM a launcher started (connects to it; starts nothing)."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's gateway
    return dict(SparkConf().getAll())


def _prepare_local_jvm(config: Config, conf: Mapping[str, str]) -> None:
    """Folders of a JVM recpipe starts, and the Python its local workers run."""
    Path(conf["spark.local.dir"]).mkdir(parents=True, exist_ok=True)
    for folder in (metastore_dir(config.local_root), jvm_tmp_dir(config.local_root)):
        folder.mkdir(parents=True, exist_ok=True)
    if conf["spark.master"].startswith("local"):
        # Local Python workers (mapInArrow, TorchDistributor) must run this interpreter, which
        # has numpy/pandas/torch; PySpark otherwise starts `python3` from PATH. The driver
        # reads only this variable (not spark.pyspark.python); clusters set their own.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def _keep_derby_log_under_root(config: Config, conf: Mapping[str, str]) -> None:
    """In a launcher's JVM, point Derby's log under the root before the metastore boots."""
    if "jdbc:derby:" not in conf.get("spark.hadoop.javax.jdo.option.ConnectionURL", ""):
        return
    from pyspark import SparkContext

    metastore = metastore_dir(config.local_root)
    metastore.mkdir(parents=True, exist_ok=True)
    system = SparkContext._jvm.java.lang.System  # type: ignore[union-attr]
    system.setProperty("derby.stream.error.file", str(metastore / "derby.log"))


def check_master_reachable(master: str, source: str, timeout: float = 5.0) -> None:
    """Fail fast when no master of a ``spark://`` URL accepts connections.

    Spark's own client retries an absent standalone master for about a minute, logging stack
    traces, and then fails with an unrelated "stopped SparkContext" error.
    """
    if not master.startswith("spark://"):
        return  # local runs need no master; YARN and Kubernetes report their own errors
    problems = []
    for address in master[len("spark://") :].split(","):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return
        except (OSError, ValueError) as exc:
            problems.append(f"{address}: {getattr(exc, 'strerror', None) or exc}")
    raise SparkStartError(f"{source} {master}: no Spark master reachable ({'; '.join(problems)})")


def _archive_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def ship_executor_environment(
    config: Config, conf: dict[str, str], given: Mapping[str, str] | None, master: str
) -> None:
    """Check every archive the session will ship; add ``spark.python_env`` to them.

    A missing or corrupt archive fails here in one line naming its key, before Spark starts
    (Spark itself would fail on every executor with a stack trace). On a cluster master the
    executors then run the archive's ``bin/python`` (``PYSPARK_PYTHON``, read by pyspark when
    the context starts); the driver keeps its own interpreter. Local masters run no executors:
    the archive is checked but not shipped.
    """
    launcher_archives = _archive_list((given or {}).get("spark.archives"))
    for spec in launcher_archives:
        check_archive(spec, "spark-submit --archives (spark.archives)")
    config_archives = _archive_list(conf.get("spark.archives"))
    for spec in config_archives:
        check_archive(spec, "spark.conf.spark.archives")
    env = config.spark.python_env
    if env is None:
        return
    env_path, _ = split_archive_spec(env)
    check_archive(env_path, "spark.python_env")
    if master.startswith("local"):
        log.info("spark.python_env: master %s runs no executors; archive not shipped", master)
        return
    shipped = f"{storage.as_location(env_path).uri}#{ALIAS}"
    conf["spark.archives"] = ",".join([*launcher_archives, *config_archives, shipped])
    os.environ["PYSPARK_PYTHON"] = EXECUTOR_PYTHON
    log.info("executors run %s from %s", EXECUTOR_PYTHON, shipped)


def get_spark(config: Config, environ: Mapping[str, str] | None = None) -> SparkSession:
    """Return the active session, or build one: from ``config`` alone, or on a launcher's JVM.

    A session that already runs (in tests, in a notebook) is reused as it is. Under
    spark-submit (``environ`` holds its gateway; default ``os.environ``) only the settings the
    launcher does not own are added. A session that cannot start is a :class:`SparkStartError`
    naming the master and the key or flag it came from.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        _share_hadoop_settings(active, config)
        return active
    launched = launcher_started_jvm(os.environ if environ is None else environ)
    given = _launcher_conf() if launched else None
    conf = session_conf(config, given)
    if launched:
        master, source = (given or {}).get("spark.master", "?"), "spark-submit --master"
    else:
        master, source = conf["spark.master"], "spark.master"
    check_master_reachable(master, source)
    ship_executor_environment(config, conf, given, master)
    if launched:
        _keep_derby_log_under_root(config, conf)
    else:
        check_embedded_metastore_free(conf)
        _prepare_local_jvm(config, conf)
    builder: Any = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    if config.spark.hive:
        builder = builder.enableHiveSupport()
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j/JVM errors have no common Python base
        raise SparkStartError(
            f"cannot start Spark on {source} {master}: {java_error_line(exc)}"
        ) from exc
    session.sparkContext.setLogLevel(config.spark.log_level)
    log_progress(session, config.spark.progress_seconds)
    _share_hadoop_settings(session, config)
    log.info(
        "spark %s started: master=%s app=%s (%s)",
        session.version,
        session.sparkContext.master,
        session.sparkContext.applicationId,
        "launcher" if launched else "config",
    )
    return session


def _share_hadoop_settings(session: SparkSession, config: Config) -> None:
    """One Hadoop view of storage for Spark and for recpipe's JVM-free file calls.

    A session recpipe reuses gains the config's ``spark.hadoop.*`` settings (e.g. a viewfs
    mount table); recpipe's own file calls (:mod:`recpipe.storage`) take the session's, which
    include what spark-submit ``--conf`` passed.
    """
    hadoop = session.sparkContext._jsc.hadoopConfiguration()
    for key, value in storage.hadoop_settings(config.spark.conf).items():
        if hadoop.get(key) != value:
            hadoop.set(key, value)
    storage.configure(storage.hadoop_settings(dict(session.sparkContext.getConf().getAll())))


def one_row(aggregate: DataFrame, what: str) -> Row:
    """The single row of a global aggregate; a clear error naming ``what`` if there is none."""
    row = aggregate.first()
    if row is None:
        raise RuntimeError(f"{what}: the aggregate returned no row")
    return row


def executor_settings(spark: SparkSession, config: Config) -> dict[str, str]:
    """Executor settings as the running session has them, else as the config asks
    (``spark.executor_cores``, ``spark.conf``): what sizes the executors' Python workers."""
    settings = dict(config.spark.conf)
    if config.spark.executor_cores:
        settings.setdefault("spark.executor.cores", str(config.spark.executor_cores))
    settings.update(spark.sparkContext.getConf().getAll())
    return settings


def persist_on_disk(frame: DataFrame) -> DataFrame:
    """``frame`` persisted on the executors' local disks only, for frames that grow with
    users or events and are read more than once.

    Why not ``MEMORY_AND_DISK``: a block of it that was evicted to disk is read back into one
    heap buffer the size of the whole block (``BlockManager.maybeCacheDiskBytesInMemory``) to
    cache it in memory again, and with a small heap that allocation is what runs out (seen in
    ``score`` at 20M events with a 1 GB driver). ``DISK_ONLY`` blocks stream back in batches,
    and the OS page cache still keeps recent ones in memory.
    """
    return frame.persist(StorageLevel.DISK_ONLY)
