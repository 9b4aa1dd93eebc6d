"""Lake tables in the metastore: external Parquet tables, partitions at the committed versions.

The stage manifests are the lake's commit record (:mod:`recpipe.commit`); the metastore mirrors
them so ``recpipe sql "SELECT count(*) FROM recpipe.events WHERE ds='...'"`` works for every
lake table. :func:`sync_lake_tables` creates each table (in ``warehouse.database``, located at
``<root>/lake/<table>``, partitioned by ``ds`` and the table's other keys) and points every
partition at the version its manifest names; partitions no manifest commits any more are
dropped (the tables are external: their files stay). ``recpipe sql`` runs it before each
query, so queries through recpipe always see the committed state.

Only what changed since the last sync costs metastore calls: the locations registered are kept
in ``<root>/manifests/_catalog/<database>.json``.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from recpipe import storage
from recpipe.commit import committed
from recpipe.config import Config
from recpipe.errors import RecpipeError, java_error_line
from recpipe.layout import PRODUCERS, catalog_state_path, lake_base, manifests_base
from recpipe.schema import DS
from recpipe.storage import Location, LocationLike

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class MetastoreError(RecpipeError):
    """The metastore cannot be reached or refused a call."""


def committed_partitions(
    root: LocationLike, stages: Iterable[str] | None = None
) -> dict[str, dict[str, str]]:
    """``{table: {partition name: version path relative to root}}`` over every manifest.

    ``stages`` limits the scan to the manifests of those stages (default: every producer).
    """
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for stage in sorted(set(PRODUCERS.values()) if stages is None else set(stages)):
        for path in storage.glob(manifests_base(root) / stage, f"{DS}=*.json"):
            manifest = storage.read_json(path)
            for table, parts in manifest.get("outputs", {}).items():
                for name in parts:
                    record = committed(manifest, table, name)
                    if record is not None:
                        found[table][name] = record["path"]
    return dict(found)


def _state_path(config: Config) -> Location:
    return catalog_state_path(config.root, config.warehouse.database)


def _load_state(config: Config) -> dict[str, dict[str, str]]:
    try:
        return dict(storage.read_json(_state_path(config)))
    except FileNotFoundError:
        return {}


def _save_state(config: Config, state: dict[str, dict[str, str]]) -> None:
    storage.write_json(_state_path(config), state)


def _spec(name: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in name.split("/"))


def _clause(spec: dict[str, str]) -> str:
    from recpipe.warehouse import sql_string

    return ", ".join(f"{key}={sql_string(value)}" for key, value in spec.items())


def _create_table(
    spark: SparkSession, config: Config, table: str, keys: list[str], sample: Location
) -> None:
    from recpipe.warehouse import registered_location, same_location, sql_string

    name = f"{config.warehouse.database}.{table}"
    # The data schema of a committed version, as DDL (nested types included).
    data_ddl = spark.read.parquet(sample.uri)._jdf.schema().toDDL()
    columns = ", ".join([data_ddl, *(f"{key} STRING" for key in keys)])
    location = lake_base(config.root) / table
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {name} ({columns}) USING parquet "
        f"PARTITIONED BY ({', '.join(keys)}) LOCATION {sql_string(location.uri)}"
    )
    registered = registered_location(spark, name)
    if not same_location(registered, location):
        raise RecpipeError(
            f"table {name} is registered at {registered}, not under paths.root ({location}): "
            "use another warehouse.database or the root it was created with"
        )


def sync_lake_tables(
    spark: SparkSession, config: Config, stages: Iterable[str] | None = None
) -> dict[str, int]:
    """Make the metastore's lake tables match the manifests; returns changes per table.

    ``stages`` limits the sync to the tables those stages commit. The database must exist
    (:func:`recpipe.warehouse.ensure_database` creates it).
    """
    from recpipe.warehouse import sql_string

    database = config.warehouse.database
    state = _load_state(config)
    changes: dict[str, int] = {}
    for table, parts in sorted(committed_partitions(config.root, stages).items()):
        name = f"{database}.{table}"
        known = state.get(table, {})
        if not spark.catalog.tableExists(name):
            keys = list(_spec(next(iter(parts))))
            _create_table(spark, config, table, keys, config.root / next(iter(parts.values())))
            known = {}
        changed = 0
        for part, path in sorted(parts.items()):
            if known.get(part) == path:
                continue
            clause = _clause(_spec(part))
            location = sql_string((config.root / path).uri)
            spark.sql(
                f"ALTER TABLE {name} ADD IF NOT EXISTS PARTITION ({clause}) LOCATION {location}"
            )
            spark.sql(f"ALTER TABLE {name} PARTITION ({clause}) SET LOCATION {location}")
            known[part] = path
            changed += 1
        for part in sorted(set(known) - set(parts)):
            spark.sql(f"ALTER TABLE {name} DROP IF EXISTS PARTITION ({_clause(_spec(part))})")
            del known[part]
            changed += 1
        if changed:
            spark.catalog.refreshTable(name)
            log.info("metastore: %s now mirrors %d committed partitions (%d changed)",
                     name, len(parts), changed)  # fmt: skip
        state[table] = known
        changes[table] = changed
    _save_state(config, state)
    return changes


def hive_session() -> SparkSession | None:
    """The active session when it has a Hive metastore (lake tables are registered there)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is None or spark.conf.get("spark.sql.catalogImplementation", "") != "hive":
        return None
    return spark


def check_metastore(config: Config) -> None:
    """Before a lake stage writes anything: the metastore answers and the database exists.

    An unreachable metastore then fails the run before any version is written.
    """
    from recpipe.warehouse import ensure_database

    spark = hive_session()
    if spark is not None:
        try:
            ensure_database(spark, config)
        except Exception as exc:  # py4j/AnalysisException: one line, naming the settings
            raise MetastoreError(
                f"the metastore (spark.sql.catalogImplementation=hive, {_metastore_setting(spark)})"
                f" cannot create or open database {config.warehouse.database}: "
                f"{java_error_line(exc)}"
            ) from None


_PASSWORD = re.compile(r"(?i)(password=)[^;&]*")


def _metastore_setting(spark: SparkSession) -> str:
    """The setting that names the metastore, as ``key=value`` (passwords in a URL masked)."""
    conf = spark.sparkContext.getConf()
    for key in ("spark.hadoop.hive.metastore.uris", "spark.hadoop.javax.jdo.option.ConnectionURL"):
        value = conf.get(key, None)
        if value:
            masked = _PASSWORD.sub(r"\g<1>***", value)
            return f"{key}={masked}"
    return "spark.hadoop.hive.metastore.uris / javax.jdo.option.ConnectionURL"


def register_commit(config: Config, stage: str) -> dict[str, int]:
    """After ``stage`` committed: point its tables' metastore partitions at the new versions.

    The manifest written just before is the commit point; a process killed between the two
    leaves the metastore on the previous versions (complete, and kept alive by the manifest's
    ``previous_outputs``) until the next commit or ``recpipe sql`` syncs it.
    """
    spark = hive_session()
    if spark is None:
        return {}
    return sync_lake_tables(spark, config, stages=[stage])
