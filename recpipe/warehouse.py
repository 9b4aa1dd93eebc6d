"""Warehouse tables in the Hive metastore: ``<database>.recommendations`` and ``model_metrics``.

Both are external Parquet tables partitioned by ``(ds, model)``. A publish writes a new
versioned folder ``<table>/ds=<ds>/model=<model>/v=<UTC time>-<id>/``, checks its row count,
writes ``_CURRENT.json`` beside the versions (the commit point: readers without a JVM,
``recpipe.query``, follow it), then points the metastore partition at the same folder and
marks the pointer "switched". A publish killed between the two leaves the pointer "pending";
the next :func:`ensure_tables` (every publish and every ``recpipe sql``) finishes the switch
before Spark reads the table. Readers only ever see complete folders; versions the pointer
does not keep (beyond ``warehouse.keep_versions``, or orphans of failed publishes) are deleted.

Read the tables through the metastore or the pointer, never by path: the partition folders
hold several versions. For the same reason never run ``MSCK REPAIR TABLE`` on them.

This module imports no pyspark at import time, so ``recpipe.query`` stays JVM-free.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recpipe import storage
from recpipe.commit import new_version_name
from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.faults import kill_point
from recpipe.layout import database_dir
from recpipe.parquet_files import data_files, footer_sha256
from recpipe.schema import DS, ITEM_ID, USER_ID
from recpipe.storage import Location, LocationLike, as_location

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

RECOMMENDATIONS = "recommendations"
MODEL_METRICS = "model_metrics"
MODEL = "model"
PARTITION_COLUMNS: tuple[str, ...] = (DS, MODEL)
POINTER_FILE = "_CURRENT.json"
VERSION_PREFIX = "v="
# About one file per million rows keeps the file count small and lookups cheap to plan.
ROWS_PER_FILE = 1_000_000
# parquet-mr's row-group target. Sorted files with small row groups let a one-user lookup
# read ~250k rows instead of a whole file: at 1M users x 10 items, 4 MB gave a lookup p50 of
# 23 ms against 48 ms at 16 MB, with the same file size and full-scan time.
ROW_GROUP_BYTES = 4 * 1024 * 1024

_DS_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MODEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PublishError(RecpipeError):
    """A partition could not be published; the previous version is still the current one."""


class PointerError(RecpipeError):
    """A partition's files no longer match what its pointer recorded when it was published."""


@dataclass(frozen=True)
class TableSpec:
    """Data columns (name, Spark SQL type) of a table and the order rows are written in."""

    columns: tuple[tuple[str, str], ...]
    sort_by: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        """Data column names, in table order."""
        return [name for name, _ in self.columns]


TABLES: dict[str, TableSpec] = {
    RECOMMENDATIONS: TableSpec(
        columns=(
            (USER_ID, "string"),
            (ITEM_ID, "string"),
            ("rank", "int"),
            ("score", "double"),
            ("generated_at", "timestamp"),
            ("source", "string"),
        ),
        sort_by=(USER_ID, "rank"),
    ),
    MODEL_METRICS: TableSpec(
        columns=(
            ("protocol", "string"),
            ("split", "string"),
            ("metric", "string"),
            ("k", "int"),
            ("value", "double"),
            ("detail", "string"),
            # The paired bootstrap's interval and resample means (null: none for the metric).
            ("ci_low", "double"),
            ("ci_high", "double"),
            ("resamples", "array<double>"),
        ),
        sort_by=("protocol", "split", "metric", "k"),
    ),
}


# ---------------------------------------------------------------------------------------------
# Layout (no JVM needed)


def _spec(table: str) -> TableSpec:
    if table not in TABLES:
        raise RecpipeError(f"unknown warehouse table '{table}'; expected one of {sorted(TABLES)}")
    return TABLES[table]


def _check_partition(ds: str, model: str) -> None:
    # Both values end up in paths and SQL text, so only plain forms are accepted.
    if not _DS_PATTERN.match(ds):
        raise RecpipeError(f"ds must be YYYY-MM-DD, got {ds!r}")
    if not _MODEL_PATTERN.match(model):
        raise RecpipeError(f"model must match {_MODEL_PATTERN.pattern}, got {model!r}")


def database_path(config: Config) -> Location:
    """Folder of the configured database: ``<root>/warehouse/<database>.db``."""
    return database_dir(config.root, config.warehouse.database)


def table_path(config: Config, table: str) -> Location:
    """Folder of ``table`` inside the database folder."""
    _spec(table)
    return database_path(config) / table


def qualified_name(config: Config, table: str) -> str:
    """``<database>.<table>`` for Spark SQL."""
    _spec(table)
    return f"{config.warehouse.database}.{table}"


def partition_path(config: Config, table: str, ds: str, model: str) -> Location:
    """Folder holding the versions and the pointer of one ``(ds, model)`` partition."""
    _check_partition(ds, model)
    return table_path(config, table) / f"{DS}={ds}" / f"{MODEL}={model}"


def read_pointer(config: Config, table: str, ds: str, model: str) -> dict[str, Any] | None:
    """The ``_CURRENT.json`` record of a partition, or None when it was never published."""
    return _read_pointer_file(partition_path(config, table, ds, model) / POINTER_FILE)


def _read_pointer_file(path: Location) -> dict[str, Any] | None:
    try:
        return dict(storage.read_json(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RecpipeError(f"unreadable partition pointer {path}: {exc}") from exc


def partition_location(config: Config, table: str, ds: str, model: str) -> Location | None:
    """Folder of the current version of a partition, from its pointer file (no JVM).

    Pointers hold the version's path relative to ``paths.root``, so a copied or moved root
    reads its own files. What the pointer names is checked before it is returned: the same
    Parquet files with the same sizes, and the recorded row count in their footers; any
    difference is a :class:`PointerError` naming the partition and the first difference.
    """
    pointer = read_pointer(config, table, ds, model)
    if pointer is None:
        return None
    return _checked_folder(config, table, ds, model, pointer)


def _checked_folder(
    config: Config, table: str, ds: str, model: str, pointer: Mapping[str, Any]
) -> Location:
    """The version folder ``pointer`` names, once its files match what the pointer recorded;
    :class:`PointerError` naming the partition and the first difference otherwise."""
    folder = config.root / pointer["path"]
    problem = _pointer_mismatch(folder, pointer)
    if problem:
        raise PointerError(
            f"{table} ds={ds} model={model}: {pointer['path']} does not match its pointer "
            f"({problem}); republish the partition"
        )
    return folder


def _parquet_files(folder: Location) -> dict[str, int]:
    """``{file name: bytes}`` of the data files in a version folder."""
    return {
        entry.name: entry.size
        for entry in storage.list_dir(folder)
        if entry.name.endswith(".parquet") and not entry.name.startswith(("_", "."))
    }


def _pointer_mismatch(folder: Location, pointer: Mapping[str, Any]) -> str | None:
    """First difference between a version folder and what its pointer recorded, or None."""
    import pyarrow.parquet as pq

    recorded: dict[str, int] = pointer.get("files", {})
    found = _parquet_files(folder)
    for name, size in sorted(recorded.items()):
        if name not in found:
            return f"{name} is missing"
        if found[name] != size:
            return f"{name} has {found[name]} bytes, the pointer recorded {size}"
    extra = sorted(set(found) - set(recorded))
    if extra:
        return f"{extra[0]} was not published"
    for name, digest in sorted(pointer.get("footers", {}).items()):
        if footer_sha256(folder / name) != digest:
            return f"{name} is not the file that was published (its Parquet footer differs)"
    rows = 0
    for name in recorded:
        with storage.open_input(folder / name) as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
    if rows != pointer["rows"]:
        return f"{rows} rows in the files, the pointer recorded {pointer['rows']}"
    return None


def published_partitions(config: Config, table: str) -> list[tuple[str, str]]:
    """``(ds, model)`` pairs that have a pointer file, sorted."""
    pairs = []
    for day in storage.glob(table_path(config, table), f"{DS}=*"):
        for model_dir in storage.glob(day, f"{MODEL}=*"):
            if storage.is_file(model_dir / POINTER_FILE):
                ds = day.name.removeprefix(f"{DS}=")
                pairs.append((ds, model_dir.name.removeprefix(f"{MODEL}=")))
    return sorted(pairs)


def _write_json_atomic(path: Location, record: dict[str, Any]) -> None:
    # A single whole-object write: the pointer is the JVM-free readers' commit point.
    storage.write_text(path, json.dumps(record, indent=2))


def prune_versions(
    root: LocationLike, folder: Location, pointer: Mapping[str, Any]
) -> list[Location]:
    """Delete version folders under ``folder`` that ``pointer`` neither names nor keeps.

    ``root`` is ``paths.root`` (pointer paths are relative to it). Orphans (versions of failed
    or killed publishes) never count as kept versions.
    """
    base = as_location(root)
    kept = {base / pointer["path"], *(base / p for p in pointer.get("previous", []))}
    versions = [
        e.location
        for e in storage.list_dir(folder)
        if e.is_dir and e.name.startswith(VERSION_PREFIX)
    ]
    removed = [p for p in versions if p not in kept]
    for path in removed:
        storage.remove_tree(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Spark side


def sql_string(text: str) -> str:
    """``text`` as a Spark SQL string literal."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _partition_clause(ds: str, model: str) -> str:
    return f"{DS}={sql_string(ds)}, {MODEL}={sql_string(model)}"


def registered_location(spark: SparkSession, name: str) -> str:
    """The location the metastore holds for table ``name``."""
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()
    return next(row.data_type for row in rows if row.col_name == "Location")


def same_location(uri: str, location: Location) -> bool:
    """Whether a metastore location ``uri`` names ``location`` (``file:/x`` = ``file:///x``)."""
    if uri.startswith("file:") and not uri.startswith("file://"):
        uri = "file://" + uri[len("file:") :]
    return Location(uri) == location


def _create_table(spark: SparkSession, config: Config, table: str) -> None:
    name = qualified_name(config, table)
    columns = [f"{col} {kind}" for col, kind in _spec(table).columns]
    columns += [f"{col} string" for col in PARTITION_COLUMNS]
    # Spark logs a stack trace when an external table's folder does not exist yet.
    storage.makedirs(table_path(config, table))
    # A table with an explicit LOCATION is EXTERNAL: dropping it or moving a partition never
    # deletes the files behind it.
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(columns)}) USING parquet "
        f"PARTITIONED BY ({', '.join(PARTITION_COLUMNS)}) "
        f"LOCATION {sql_string(table_path(config, table).uri)}"
    )
    location = registered_location(spark, name)
    if not same_location(location, table_path(config, table)):
        raise RecpipeError(
            f"table {name} is registered at {location}, not under paths.root "
            f"({table_path(config, table)}): use another warehouse.database or the root it "
            "was created with"
        )
    _add_missing_columns(spark, name, _spec(table))


def _add_missing_columns(spark: SparkSession, name: str, spec: TableSpec) -> None:
    """Tables created by an older recpipe gain the columns added since (null in old files)."""
    existing = {field.name for field in spark.table(name).schema.fields}
    missing = [f"{col} {kind}" for col, kind in spec.columns if col not in existing]
    if missing:
        log.info("adding columns %s to %s", ", ".join(missing), name)
        spark.sql(f"ALTER TABLE {name} ADD COLUMNS ({', '.join(missing)})")


def ensure_database(spark: SparkSession, config: Config) -> None:
    """Create the database (located under ``paths.root``) if missing."""
    database = config.warehouse.database
    spark.sql(
        f"CREATE DATABASE IF NOT EXISTS {database} LOCATION {sql_string(database_path(config).uri)}"
    )


def ensure_tables(spark: SparkSession, config: Config) -> None:
    """Create the database (located under ``paths.root``) and both tables if missing."""
    ensure_database(spark, config)
    for table in TABLES:
        _create_table(spark, config, table)
    sync_pending_partitions(spark, config)


def _conform(df: DataFrame, spec: TableSpec, table: str) -> DataFrame:
    missing = [col for col in spec.names if col not in df.columns]
    if missing:
        raise RecpipeError(f"cannot publish to {table}: columns {missing} missing from the data")
    return df.select(*(df[col].cast(kind).alias(col) for col, kind in spec.columns))


def _layout(df: DataFrame, spec: TableSpec, rows: int) -> DataFrame:
    files = max(1, math.ceil(rows / ROWS_PER_FILE))
    # Range partitioning samples the input first; a single file needs no sampling.
    spread = df.repartition(1) if files == 1 else df.repartitionByRange(files, *spec.sort_by)
    # Sorted files give tight min/max statistics per row group, which readers prune on.
    return spread.sortWithinPartitions(*spec.sort_by)


def _write_version(df: DataFrame, spec: TableSpec, rows: int, folder: Location) -> int:
    """Write the version folder and return the row count read back from its files."""
    writer = _layout(df, spec, rows).write.mode("error")
    writer.option("parquet.block.size", str(ROW_GROUP_BYTES)).parquet(folder.uri)
    spark = df.sparkSession
    return spark.read.parquet(folder.uri).count()


def _switch_partition(
    spark: SparkSession, config: Config, table: str, ds: str, model: str, folder: Location
) -> None:
    name = qualified_name(config, table)
    clause = _partition_clause(ds, model)
    location = sql_string(folder.uri)
    if spark.sql(f"SHOW PARTITIONS {name} PARTITION ({clause})").count():
        spark.sql(f"ALTER TABLE {name} PARTITION ({clause}) SET LOCATION {location}")
    else:
        spark.sql(f"ALTER TABLE {name} ADD IF NOT EXISTS PARTITION ({clause}) LOCATION {location}")


def publish_partition(
    spark: SparkSession,
    config: Config,
    table: str,
    df: DataFrame,
    ds: str,
    model: str,
    *,
    expected_rows: int | None = None,
    pointer_extra: dict[str, Any] | None = None,
) -> Location:
    """Atomically replace partition ``(ds, model)`` of ``table`` with ``df``; returns its folder.

    ``df`` must hold the table's data columns (cast to the table types; others are dropped).
    ``df`` is evaluated more than once (``count()`` unless ``expected_rows`` is given, range
    sampling above ``ROWS_PER_FILE`` rows, the write): persist an expensive frame first. When
    the rows read back differ from the expected count, or anything fails before the switch, the
    new folder is removed, :class:`PublishError` or the original error is raised, and the
    previous version stays current. ``pointer_extra`` is stored in the pointer file (e.g. which
    model a published partition came from).
    """
    spec = _spec(table)
    _check_partition(ds, model)
    ensure_tables(spark, config)
    data = _conform(df, spec, table)
    rows = data.count() if expected_rows is None else expected_rows
    parent = partition_path(config, table, ds, model)
    folder = parent / new_version_name()
    try:
        written = _write_version(data, spec, rows, folder)
        if written != rows:
            raise PublishError(
                f"{table} ds={ds} model={model}: wrote {written} rows, expected {rows}; "
                "the previous version is still current"
            )
    except BaseException:
        # Nothing points at the new folder yet.
        storage.remove_tree(folder)
        raise
    return _commit_version(spark, config, table, ds, model, folder, rows, pointer_extra)


def publish_copy(
    spark: SparkSession,
    config: Config,
    table: str,
    ds: str,
    source_model: str,
    model: str,
    *,
    pointer_extra: dict[str, Any] | None = None,
) -> Location:
    """Atomically replace partition ``(ds, model)`` of ``table`` with the current version of
    ``(ds, source_model)``; returns the new folder.

    The source's files already have the table's layout (written by :func:`publish_partition`),
    so when their columns are the table's they are copied byte for byte, without a Spark job
    (an object store copies them server-side). The source is checked against its pointer
    (names, sizes, footers, rows: :class:`PointerError`) and so is the copy before the
    switch. Files whose columns differ (written before a schema change) are rewritten by
    :func:`publish_partition`. Either way the commit is :func:`publish_partition`'s: nothing is
    visible until the pointer names the new folder.
    """
    spec = _spec(table)
    _check_partition(ds, source_model)
    _check_partition(ds, model)
    ensure_tables(spark, config)
    pointer = read_pointer(config, table, ds, source_model)
    if pointer is None:
        raise PublishError(f"{table} ds={ds} model={source_model} has never been published")
    source = _checked_folder(config, table, ds, source_model, pointer)
    frame = spark.read.parquet(source.uri)
    columns = [(f.name, f.dataType.simpleString()) for f in frame.schema]
    wanted = [(f.name, f.dataType.simpleString()) for f in _conform(frame, spec, table).schema]
    if columns != wanted or "files" not in pointer:
        log.info("%s ds=%s model=%s: columns differ from the table's, rewriting", table, ds,
                 source_model)  # fmt: skip
        return publish_partition(
            spark, config, table, frame, ds, model,
            expected_rows=pointer["rows"], pointer_extra=pointer_extra,
        )  # fmt: skip
    folder = partition_path(config, table, ds, model) / new_version_name()
    try:
        for name in sorted(pointer["files"]):  # copy_file makes the folder
            storage.copy_file(source / name, folder / name)
        problem = _pointer_mismatch(folder, pointer)
        if problem:
            raise PublishError(
                f"{table} ds={ds} model={model}: the copy of {source_model}'s files differs from "
                f"its pointer ({problem}); the previous version is still current"
            )
    except BaseException:
        storage.remove_tree(folder)
        raise
    return _commit_version(spark, config, table, ds, model, folder, pointer["rows"], pointer_extra)


def _commit_version(
    spark: SparkSession,
    config: Config,
    table: str,
    ds: str,
    model: str,
    folder: Location,
    rows: int,
    pointer_extra: dict[str, Any] | None,
) -> Location:
    """Make the written ``folder`` the current version of ``(ds, model)``: pointer first (the
    commit point), then the metastore; old versions pruned."""
    parent = partition_path(config, table, ds, model)
    pointer_file = parent / POINTER_FILE
    previous = _read_pointer_file(pointer_file)
    kept = [] if previous is None else [previous["path"], *previous.get("previous", [])]
    pointer = {
        "path": folder.relative_to(config.root),
        "files": _parquet_files(folder),
        "footers": {p.name: footer_sha256(p) for p in data_files(folder)},
        "version": folder.name.removeprefix(VERSION_PREFIX),
        "rows": rows,
        "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # Older versions still readable (a reader may have resolved one a moment ago).
        "previous": kept[: max(config.warehouse.keep_versions - 1, 0)],
        "metastore": "pending",
        **(pointer_extra or {}),
    }
    # The pointer is the commit point; the metastore follows it. A process killed between the
    # two leaves "pending", which the next ensure_tables (every publish, every `recpipe sql`)
    # repairs before anything reads the table through Spark.
    kill_point("publish:before_pointer")
    _write_json_atomic(pointer_file, pointer)
    try:
        kill_point("publish:before_metastore")
        _switch_partition(spark, config, table, ds, model, folder)
    except BaseException:
        # A failed ALTER changed nothing: put the previous pointer back and drop the folder.
        if previous is None:
            storage.delete(pointer_file)
        else:
            _write_json_atomic(pointer_file, previous)
        storage.remove_tree(folder)
        raise
    spark.catalog.refreshTable(qualified_name(config, table))
    _write_json_atomic(pointer_file, {**pointer, "metastore": "switched"})
    removed = prune_versions(config.root, parent, pointer)
    log.info("published %s ds=%s model=%s: %d rows -> %s", table, ds, model, rows, folder)
    log.debug("pruned %d old versions of %s ds=%s model=%s", len(removed), table, ds, model)
    return folder


def sync_pending_partitions(spark: SparkSession, config: Config) -> list[tuple[str, str, str]]:
    """Point the metastore at every pointer a killed publish left "pending"; returns them."""
    synced = []
    for table in TABLES:
        for ds, model in published_partitions(config, table):
            pointer_file = partition_path(config, table, ds, model) / POINTER_FILE
            pointer = _read_pointer_file(pointer_file)
            if pointer is None or pointer.get("metastore") != "pending":
                continue
            folder = config.root / pointer["path"]
            _switch_partition(spark, config, table, ds, model, folder)
            spark.catalog.refreshTable(qualified_name(config, table))
            _write_json_atomic(pointer_file, {**pointer, "metastore": "switched"})
            prune_versions(config.root, pointer_file.parent, pointer)
            log.warning("%s ds=%s model=%s: finished a killed publish's metastore switch",
                        table, ds, model)  # fmt: skip
            synced.append((table, ds, model))
    return synced


# Columns a model_metrics row may leave out (they are null then).
_OPTIONAL_METRIC_COLUMNS = ("detail", "ci_low", "ci_high", "resamples")


def _metric_row(row: dict[str, Any]) -> tuple[Any, ...]:
    required = [c for c in TABLES[MODEL_METRICS].names if c not in _OPTIONAL_METRIC_COLUMNS]
    missing = [col for col in required if col not in row]
    if missing:
        raise RecpipeError(f"model_metrics row {row!r} lacks {missing}")

    def number(key: str) -> float | None:
        return None if row.get(key) is None else float(row[key])

    k = None if row["k"] is None else int(row["k"])
    resamples = row.get("resamples")
    return (
        str(row["protocol"]), str(row["split"]), str(row["metric"]), k, number("value"),
        row.get("detail"), number("ci_low"), number("ci_high"),
        None if resamples is None else [float(v) for v in resamples],
    )  # fmt: skip


def write_model_metrics(
    spark: SparkSession, config: Config, rows: list[dict[str, Any]], ds: str, model: str
) -> Location:
    """Replace partition ``(ds, model)`` of ``model_metrics`` with ``rows``; returns its folder.

    Each row has ``protocol``, ``split``, ``metric``, ``k`` (None for metrics without a cutoff)
    ``value`` and optionally ``detail`` (text, e.g. why a gate decided as it did), the
    bootstrap interval ``ci_low``/``ci_high`` and the ``resamples`` behind it.
    """
    if not rows:
        raise RecpipeError(f"no model_metrics rows to publish for ds={ds} model={model}")
    schema = ", ".join(f"{col} {kind}" for col, kind in TABLES[MODEL_METRICS].columns)
    df = spark.createDataFrame([_metric_row(row) for row in rows], schema=schema)
    return publish_partition(spark, config, MODEL_METRICS, df, ds, model, expected_rows=len(rows))
