"""Where every piece of recpipe state lives under ``paths.root``, and the lake's table names.

One module owns the layout so that moving a folder is a change here, not a hunt through
stages. Nothing here touches the disk: these are names. State lives under ``paths.root``, a
:class:`~recpipe.storage.Location` (a local path or any Hadoop URI); what must sit on this
machine's own disk (the embedded metastore, Spark's local dirs, the JVM's temp folder, the
training launchers' run files) lives under ``paths.local``, a local folder (``paths.root``
itself when that is local).

```
<root>/
  raw/<dataset>/                         fetched or generated raw logs
  lake/<table>/<partition>/v=<id>/       versioned lake partitions (see recpipe.commit)
  manifests/<stage>/ds=<ds>.json         run manifests: the commit records
  manifests/<stage>/ds=<ds>.lock         one run per (stage, ds)
  manifests/<stage>/attempts/ds=<ds>/    failed or killed runs' records
  manifests/_catalog/<database>.json     what the metastore mirrors of the lake
  models/<model>/<ds>/<protocol>/        trained models (baselines and deep)
  warehouse/<database>.db/               published tables (recommendations, model_metrics)
  reports/<ds>/index.html                HTML run report
  tmp/<stage>-<ds>-<id>/                 one run's scratch that executors write (swept)
<local>/                                 paths.local (= <root> when that is local)
  metastore/                             embedded Derby metastore (laptop default)
  tmp/spark/, tmp/jvm/                   Spark local dirs, JVM temp
  tmp/runs/<model>-<ds>-<id>/            training launchers' run files (spec, logs, scripts)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from recpipe.schema import RECENT_SAMPLE_TABLES, SAMPLE_TABLES
from recpipe.storage.location import Location, LocationLike, as_location

# Lake tables.
EVENTS = "events"
QUARANTINE = "quarantine"
VOCAB_USERS = "vocab_users"
VOCAB_ITEMS = "vocab_items"
SESSIONS = "sessions"
TRAIN, VALID, TEST = "train", "valid", "test"
SPLIT_PARTS: tuple[str, ...] = (TRAIN, VALID, TEST)
SAMPLES: tuple[str, ...] = (*SAMPLE_TABLES.values(), *RECENT_SAMPLE_TABLES.values())
# Each user's last train event's context indexes per (ds, protocol): a model's context when it
# scores (no event to read it from), written by export beside the samples.
LAST_CONTEXT = "last_context"
# What the catalog stage writes: reference data per ds (catalogues change), and the records
# it rejected (partition ds/input).
ITEMS = "items"
USERS = "users"
KG_TRIPLES = "kg_triples"
ITEM_ENTITIES = "item_entities"
CATALOG_QUARANTINE = "catalog_quarantine"
CATALOG_TABLES: tuple[str, ...] = (ITEMS, USERS, KG_TRIPLES, ITEM_ENTITIES, CATALOG_QUARANTINE)
# What the features stage writes per ds: one row per indexed item / user with every declared
# feature, and the stable value indexes of the categorical and multi-valued ones.
ITEM_FEATURES = "item_features"
USER_FEATURES = "user_features"
FEATURE_VOCAB = "feature_vocab"
FEATURE_TABLES: tuple[str, ...] = (ITEM_FEATURES, USER_FEATURES, FEATURE_VOCAB)
# Factor baselines' user vectors (user_idx, user_vector) per (ds, protocol), one table per
# model: they reach scoring and evaluation as a column joined per user, never through the driver.
FACTOR_BASELINES: tuple[str, ...] = ("als", "nmf", "item2vec")


def user_factors_table(model: str) -> str:
    """The lake table of factor baseline ``model``'s user vectors."""
    return f"{model}_user_factors"


ALS_USER_FACTORS = user_factors_table("als")
# Item-kNN's neighbour lists (item_i, item_j, sim) per (ds, protocol): never collected.
ITEMKNN_NEIGHBOURS = "itemknn_neighbours"

# A deep model's user-indexed tables (user_idx, user_vector) per (ds, protocol), one lake table
# per model, published by train-<model> (recpipe.models.user_rows).
USER_ROWS_PREFIX = "user_rows_"


def user_rows_table(model: str) -> str:
    """The lake table of deep model ``model``'s user rows."""
    return f"{USER_ROWS_PREFIX}{model}"


# Which stage publishes each lake table: its manifest is the table's commit record.
PRODUCERS: dict[str, str] = {
    EVENTS: "clean",
    QUARANTINE: "clean",
    **{table: "catalog" for table in CATALOG_TABLES},
    VOCAB_USERS: "vocab",
    VOCAB_ITEMS: "vocab",
    **{table: "features" for table in FEATURE_TABLES},
    SESSIONS: "sessionize",
    TRAIN: "split",
    VALID: "split",
    TEST: "split",
    **{table: "export" for table in (*SAMPLES, LAST_CONTEXT)},
    **{user_factors_table(model): f"train-{model}" for model in FACTOR_BASELINES},
    ITEMKNN_NEIGHBOURS: "train-itemknn",
}


def raw_dir(root: LocationLike, dataset: str) -> Location:
    """Folder of a fetched or generated raw data set."""
    return as_location(root) / "raw" / dataset


def lake_base(root: LocationLike) -> Location:
    """Folder of all lake tables."""
    return as_location(root) / "lake"


def partition_name(partition: Mapping[str, str]) -> str:
    """``{"ds": "2026-11-22", "protocol": "x"}`` -> ``ds=2026-11-22/protocol=x``."""
    return "/".join(f"{key}={value}" for key, value in partition.items())


def partition_folder(root: LocationLike, table: str, partition: Mapping[str, str]) -> Location:
    """Folder holding the versions of one partition."""
    return lake_base(root) / table / partition_name(partition)


def manifests_base(root: LocationLike) -> Location:
    """Folder of all manifests, one sub-folder per stage."""
    return as_location(root) / "manifests"


def manifest_path(root: LocationLike, stage: str, ds: str) -> Location:
    """Where the manifest of ``stage`` for ``ds`` lives."""
    return manifests_base(root) / stage / f"ds={ds}.json"


def attempt_path(root: LocationLike, stage: str, ds: str, run_id: str) -> Location:
    """Where the record of a failed run of ``stage`` for ``ds`` lives."""
    return manifests_base(root) / stage / "attempts" / f"ds={ds}" / f"{run_id}.json"


def lock_path(root: LocationLike, stage: str, ds: str) -> Location:
    """The lock file of (``stage``, ``ds``)."""
    return manifests_base(root) / stage / f"ds={ds}.lock"


def catalog_state_path(root: LocationLike, database: str) -> Location:
    """What the metastore mirrors of the lake for ``database`` (see recpipe.lake_catalog)."""
    return manifests_base(root) / "_catalog" / f"{database}.json"


def models_base(root: LocationLike) -> Location:
    """Folder of all trained models."""
    return as_location(root) / "models"


def model_dir(root: LocationLike, model: str, ds: str, protocol: str) -> Location:
    """Folder of one trained model (a baseline's or a deep model's files)."""
    return models_base(root) / model / ds / protocol


def warehouse_dir(root: LocationLike) -> Location:
    """``spark.sql.warehouse.dir`` of the embedded default."""
    return as_location(root) / "warehouse"


def database_dir(root: LocationLike, database: str) -> Location:
    """Folder of the published tables of ``database``."""
    return warehouse_dir(root) / f"{database}.db"


def metastore_dir(local: Path) -> Path:
    """The embedded Derby metastore (and its log), under ``paths.local``."""
    return Path(local) / "metastore"


def report_path(root: LocationLike, ds: str) -> Location:
    """The HTML run report of ``ds``."""
    return as_location(root) / "reports" / ds / "index.html"


def scratch_root(root: LocationLike) -> Location:
    """Folder of ``<stage>-<ds>-<id>`` run scratch that executors write (swept with the run)."""
    return as_location(root) / "tmp"


def local_scratch(local: Path) -> Path:
    """This machine's temp folder under ``paths.local``."""
    return Path(local) / "tmp"


def run_scratch(root: LocationLike, stage: str, ds: str, run_id: str) -> Location:
    """One run's scratch folder (a sweep of (stage, ds) removes it)."""
    return scratch_root(root) / f"{stage}-{ds}-{run_id}"


def spark_local_dir(local: Path) -> Path:
    """``spark.local.dir`` of a JVM recpipe starts itself."""
    return local_scratch(local) / "spark"


def jvm_tmp_dir(local: Path) -> Path:
    """``java.io.tmpdir`` of a JVM recpipe starts itself."""
    return local_scratch(local) / "jvm"


def launcher_run_dir(local: Path, model: str, ds: str, run_id: str) -> Path:
    """One training launch's local files: spec, per-rank script, logs, child temp."""
    return local_scratch(local) / "runs" / f"{model}-{ds}-{run_id}"
