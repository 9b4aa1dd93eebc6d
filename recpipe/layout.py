"""Where every piece of recpipe state lives under ``paths.root``, and the lake's table names.

One module owns the layout so that moving a folder (or, later, putting state behind a URI) is
a change here, not a hunt through stages. Nothing here touches the disk: these are names.

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
  metastore/                             embedded Derby metastore (laptop default)
  reports/<ds>/index.html                HTML run report
  tmp/                                   scratch: Spark local dirs, JVM temp, run scratch
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from recpipe.schema import SAMPLE_TABLES

# Lake tables.
EVENTS = "events"
QUARANTINE = "quarantine"
VOCAB_USERS = "vocab_users"
VOCAB_ITEMS = "vocab_items"
SESSIONS = "sessions"
TRAIN, VALID, TEST = "train", "valid", "test"
SPLIT_PARTS: tuple[str, ...] = (TRAIN, VALID, TEST)
SAMPLES: tuple[str, ...] = tuple(SAMPLE_TABLES.values())

# Which stage publishes each lake table: its manifest is the table's commit record.
PRODUCERS: dict[str, str] = {
    EVENTS: "clean",
    QUARANTINE: "clean",
    VOCAB_USERS: "vocab",
    VOCAB_ITEMS: "vocab",
    SESSIONS: "sessionize",
    TRAIN: "split",
    VALID: "split",
    TEST: "split",
    **{table: "export" for table in SAMPLES},
}


def raw_dir(root: Path, dataset: str) -> Path:
    """Folder of a fetched or generated raw data set."""
    return Path(root) / "raw" / dataset


def lake_base(root: Path) -> Path:
    """Folder of all lake tables."""
    return Path(root) / "lake"


def partition_name(partition: Mapping[str, str]) -> str:
    """``{"ds": "2026-11-22", "protocol": "x"}`` -> ``ds=2026-11-22/protocol=x``."""
    return "/".join(f"{key}={value}" for key, value in partition.items())


def partition_folder(root: Path, table: str, partition: Mapping[str, str]) -> Path:
    """Folder holding the versions of one partition."""
    return lake_base(root) / table / partition_name(partition)


def manifests_base(root: Path) -> Path:
    """Folder of all manifests, one sub-folder per stage."""
    return Path(root) / "manifests"


def manifest_path(root: Path, stage: str, ds: str) -> Path:
    """Where the manifest of ``stage`` for ``ds`` lives."""
    return manifests_base(root) / stage / f"ds={ds}.json"


def attempt_path(root: Path, stage: str, ds: str, run_id: str) -> Path:
    """Where the record of a failed run of ``stage`` for ``ds`` lives."""
    return manifests_base(root) / stage / "attempts" / f"ds={ds}" / f"{run_id}.json"


def lock_path(root: Path, stage: str, ds: str) -> Path:
    """The lock file of (``stage``, ``ds``)."""
    return manifests_base(root) / stage / f"ds={ds}.lock"


def catalog_state_path(root: Path, database: str) -> Path:
    """What the metastore mirrors of the lake for ``database`` (see recpipe.lake_catalog)."""
    return manifests_base(root) / "_catalog" / f"{database}.json"


def models_base(root: Path) -> Path:
    """Folder of all trained models."""
    return Path(root) / "models"


def model_dir(root: Path, model: str, ds: str, protocol: str) -> Path:
    """Folder of one trained model (a baseline's or a deep model's files)."""
    return models_base(root) / model / ds / protocol


def warehouse_dir(root: Path) -> Path:
    """``spark.sql.warehouse.dir`` of the embedded default."""
    return Path(root) / "warehouse"


def database_dir(root: Path, database: str) -> Path:
    """Folder of the published tables of ``database``."""
    return warehouse_dir(root) / f"{database}.db"


def metastore_dir(root: Path) -> Path:
    """The embedded Derby metastore (and its log)."""
    return Path(root) / "metastore"


def report_path(root: Path, ds: str) -> Path:
    """The HTML run report of ``ds``."""
    return Path(root) / "reports" / ds / "index.html"


def scratch_root(root: Path) -> Path:
    """Folder for temporary files: ``<stage>-<ds>-<id>`` run scratch (swept with the run),
    Spark's local dirs and the JVM's temp folder."""
    return Path(root) / "tmp"


def run_scratch(root: Path, stage: str, ds: str, run_id: str) -> Path:
    """One run's scratch folder (a sweep of (stage, ds) removes it)."""
    return scratch_root(root) / f"{stage}-{ds}-{run_id}"


def spark_local_dir(root: Path) -> Path:
    """``spark.local.dir`` of a JVM recpipe starts itself."""
    return scratch_root(root) / "spark"


def jvm_tmp_dir(root: Path) -> Path:
    """``java.io.tmpdir`` of a JVM recpipe starts itself."""
    return scratch_root(root) / "jvm"
