"""Run manifests: ``<root>/manifests/<stage>/ds=<ds>.json`` plus the resolved config beside it.

The manifest of a successful run is its commit record (see :mod:`recpipe.commit`): written
last, in one atomic replace, it names the lake versions the run published. A failed run never
overwrites it; its record goes to ``manifests/<stage>/attempts/ds=<ds>/<run id>.json``. One
run per (stage, ds) at a time: :class:`StageRun` holds ``ds=<ds>.lock`` while it runs.

The lake-writing stages describe their own fields with typed models (:class:`CleanManifest`,
:class:`VocabManifest`, :class:`SessionizeManifest`, :class:`SplitManifest`,
:class:`ExportManifest`); readers load a manifest through them (``SplitManifest.read(root,
ds)``). The JSON on disk is the same plain object it always was.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from recpipe import __version__, storage
from recpipe.commit import (
    VERSION_PREFIX,
    new_version_name,
    output_record,
    sweep_run,
)
from recpipe.config import Config
from recpipe.errors import MissingInputError
from recpipe.faults import kill_point
from recpipe.layout import attempt_path, lock_path, manifest_path
from recpipe.locks import StageLock
from recpipe.storage import Location, LocationLike, as_location

log = logging.getLogger(__name__)

__all__ = [
    "CatalogManifest",
    "CleanManifest",
    "ExportManifest",
    "FeaturesManifest",
    "SessionizeManifest",
    "SplitManifest",
    "StageManifest",
    "StageRun",
    "VocabManifest",
    "manifest_path",
    "read_manifest",
    "read_stage_manifest",
    "runtime_info",
]


def _read_if_present(path: Location) -> dict[str, Any] | None:
    try:
        return dict(storage.read_json(path))
    except FileNotFoundError:
        return None


def read_manifest(root: LocationLike, stage: str, ds: str) -> dict[str, Any]:
    """Load a manifest, with a clear error when the stage has not run for ``ds``."""
    path = manifest_path(root, stage, ds)
    manifest = _read_if_present(path)
    if manifest is None:
        raise MissingInputError(f"no manifest for stage '{stage}' ds={ds} at {path}")
    return manifest


def runtime_info() -> dict[str, str | None]:
    """Where this process ran: Spark master, application id, Spark and recpipe versions.

    Reads the active session only when pyspark is already imported (JVM-free commands such as
    ``recs`` record nulls and never pay for the import).
    """
    info: dict[str, str | None] = {
        "recpipe_version": __version__,
        "spark_version": None,
        "spark_master": None,
        "spark_app_id": None,
    }
    if "pyspark.sql" not in sys.modules:
        return info
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        context = active.sparkContext
        info.update(
            spark_version=active.version,
            spark_master=context.master,
            spark_app_id=context.applicationId,
        )
    return info


class StageRun:
    """Context manager around one stage run: lock, timing, outputs, and the commit.

    On entry it takes the (stage, ds) lock and removes versions left by killed runs. Stage code
    fills :attr:`record` with row counts and figures and registers written lake versions with
    :meth:`add_output`. On success the manifest (with ``outputs``) is written: the commit. On
    failure the record goes beside it under ``attempts/`` and this run's versions are removed.
    """

    def __init__(self, config: Config, stage: str, ds: str) -> None:
        self.config = config
        self.stage = stage
        self.ds = ds
        self.run_id = new_version_name().removeprefix(VERSION_PREFIX)
        self.record: dict[str, Any] = {}
        self.outputs: dict[str, dict[str, dict[str, Any]]] = {}
        self.manifest: dict[str, Any] = {}
        self._previous: dict[str, Any] | None = None
        self._lock = StageLock(lock_path(config.root, stage, ds), stage, ds, self.run_id)
        self._t0 = 0.0
        self._started = ""

    @property
    def path(self) -> Location:
        """Manifest file of this run."""
        return manifest_path(self.config.root, self.stage, self.ds)

    def add_output(self, table: str, partition: str, folder: LocationLike) -> dict[str, Any]:
        """Register a fully written version folder; it becomes current when the run commits."""
        record = output_record(self.config.root, as_location(folder))
        self.outputs.setdefault(table, {})[partition] = record
        return record

    def __enter__(self) -> StageRun:
        from recpipe.tracking import require

        require(self.config, self.stage)  # before the lock: a config error changes nothing
        self._lock.acquire()
        try:
            self._previous = _read_if_present(self.path)
            sweep_run(self.config.root, self.stage, self.ds, self._previous)
        except BaseException:
            self._lock.release()
            raise
        self._t0 = time.perf_counter()
        self._started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        log.info("%s ds=%s: started", self.stage, self.ds)
        return self

    def _base_record(self, ok: bool) -> dict[str, Any]:
        record: dict[str, Any] = {
            "stage": self.stage,
            "ds": self.ds,
            "run_id": self.run_id,
            "started_at": self._started,
            "seconds": round(time.perf_counter() - self._t0, 3),
            "config_hash": self.config.hash(),
            "status": "ok" if ok else "failed",
            **runtime_info(),
        }
        if self._lock.took_over:
            record["took_over_lock_of"] = self._lock.took_over.get("run_id")
        return record

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                self._commit()
            else:
                self._record_failure(exc_type, exc, tb)
        finally:
            self._lock.release()
        log.info(
            "%s ds=%s: %s in %.1fs",
            self.stage, self.ds, self.manifest["status"], self.manifest["seconds"],
        )  # fmt: skip

    def _commit(self) -> None:
        manifest = {**self._base_record(ok=True), **self.record}
        if self.outputs or (self._previous or {}).get("outputs"):
            manifest["outputs"] = self.outputs
            previous = self._previous or {}
            if previous.get("status") == "ok" and previous.get("outputs"):
                manifest["previous_outputs"] = previous["outputs"]
        self.manifest = manifest
        root = self.config.root
        kill_point(f"{self.stage}:before_commit")
        storage.write_text(self.path.with_name(f"ds={self.ds}.config.yaml"), self.config.to_yaml())
        # One whole-object write (fsynced locally, one PUT on object stores): the commit point.
        storage.write_text(self.path, json.dumps(manifest, indent=2, default=str))
        kill_point(f"{self.stage}:after_commit")
        sweep_run(root, self.stage, self.ds, manifest)
        from recpipe.tracking import track_manifest

        track_manifest(self.config, manifest)  # after the commit: the manifest is the record

    def _record_failure(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException,
        tb: TracebackType | None,
    ) -> None:
        manifest = {**self._base_record(ok=False), **self.record}
        manifest["error"] = f"{type(exc).__name__}: {exc}"
        manifest["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))[-4000:]
        self.manifest = manifest
        # Beside, never over, the manifest of the data still being served.
        attempt = attempt_path(self.config.root, self.stage, self.ds, self.run_id)
        storage.write_text(attempt, json.dumps(manifest, indent=2, default=str))
        sweep_run(self.config.root, self.stage, self.ds, self._previous)


def last_attempt(root: LocationLike, stage: str, ds: str) -> dict[str, Any] | None:
    """The newest failed-run record of ``stage`` for ``ds``, or None."""
    records = storage.glob(attempt_path(root, stage, ds, "x").parent, "*.json")
    return dict(storage.read_json(records[-1])) if records else None


# ---------------------------------------------------------------------------------------------
# Typed manifests of the lake-writing stages


class StageManifest(BaseModel):
    """A run manifest: the fields :class:`StageRun` writes for every stage.

    Subclasses declare the fields their stage adds, in the order the JSON holds them. Every
    field is optional: a stage sets its fields as it computes them, and a failed run's record
    holds only those set before it failed. :meth:`stage_fields` dumps exactly the fields that
    were set, so the file is the same plain JSON object the stage always wrote.
    """

    model_config = ConfigDict(extra="ignore")

    STAGE: ClassVar[str] = ""

    stage: str | None = None
    ds: str | None = None
    run_id: str | None = None
    started_at: str | None = None
    seconds: float | None = None
    config_hash: str | None = None
    status: str | None = None
    recpipe_version: str | None = None
    spark_version: str | None = None
    spark_master: str | None = None
    spark_app_id: str | None = None
    took_over_lock_of: str | None = None
    outputs: dict[str, dict[str, dict[str, Any]]] | None = None
    previous_outputs: dict[str, dict[str, dict[str, Any]]] | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        """Whether this is the manifest of a successful (committed) run."""
        return self.status == "ok"

    def stage_fields(self) -> dict[str, Any]:
        """The stage's own fields that were set, in declaration order (no common fields)."""
        return self.model_dump(exclude_unset=True, exclude=set(_COMMON_FIELDS))

    @classmethod
    def parse(cls, manifest: Mapping[str, Any]) -> Self:
        """The typed view of a manifest read as JSON."""
        return cls.model_validate(dict(manifest))

    @classmethod
    def read(cls, root: LocationLike, ds: str) -> Self:
        """Load the manifest of ``cls.STAGE`` for ``ds`` (MissingInputError when there is none)."""
        return cls.parse(read_manifest(root, cls.STAGE, ds))


_COMMON_FIELDS = frozenset(StageManifest.model_fields)


class CleanManifest(StageManifest):
    """``clean``: raw input read, and how its rows split into events, quarantine, duplicates."""

    STAGE: ClassVar[str] = "clean"

    input: str | None = None
    ts_window: list[str] | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    rows_quarantined: int | None = None
    rows_duplicate: int | None = None
    quarantine_by_reason: dict[str, int] | None = None


class CatalogInputCounts(BaseModel):
    """How one catalogue input's records split into rows, quarantine and duplicates."""

    input: str
    table: str
    rows_in: int
    rows_out: int
    rows_quarantined: int
    rows_duplicate: int
    quarantine_by_reason: dict[str, int]


class CatalogManifest(StageManifest):
    """``catalog``: the reference inputs read (items, users, kg, links) and their counts."""

    STAGE: ClassVar[str] = "catalog"

    inputs: dict[str, CatalogInputCounts] | None = None


class FeatureStats(BaseModel):
    """What one feature's column holds for the day."""

    kind: str
    field: str
    rows_with_value: int = 0
    rows_missing: int = 0
    rows_invalid: int = 0  # numeric: present but not a finite number (then counted missing)
    oov_values: int = 0  # categorical, multi: values mapped to the out-of-vocabulary index
    truncated_rows: int = 0  # multi, text: rows holding more values than the column's width
    width: int = 1  # indexes per row (multi, text)
    size: int | None = None  # distinct indexes the column may hold (None: a float column)
    vocabulary: int | None = None  # categorical, multi: values with their own index
    new_values: int | None = None
    mean: float | None = None  # numeric: of the finite values
    std: float | None = None
    boundaries: list[float] | None = None  # numeric bucketize: where buckets 2.. start


class FeatureTableCounts(BaseModel):
    """How one catalogue snapshot became a feature table."""

    table: str
    catalogue_ds: str
    rows_in: int  # catalogue rows
    rows_out: int  # rows with an index (the key occurs in events up to ds)
    rows_without_index: int  # catalogue keys never seen in events: no index, no row
    index_without_row: int  # indexed keys the catalogue lacks: every feature missing


class FeaturesManifest(StageManifest):
    """``features``: the feature tables built from the catalogue, and each feature's stats."""

    STAGE: ClassVar[str] = "features"

    tables: dict[str, FeatureTableCounts] | None = None
    features: dict[str, FeatureStats] | None = None  # by "<entity>.<name>"
    vocab_base_ds: str | None = None
    vocab_rows: int | None = None
    # Summed over the tables: catalogue rows read, feature rows written (the stage summary's).
    rows_in: int | None = None
    rows_out: int | None = None


class VocabGrowth(BaseModel):
    """How one vocabulary grew over its previous snapshot."""

    base_ds: str | None
    before: int
    new: int
    ids_in_events: int


class VocabManifest(StageManifest):
    """``vocab``: the events days read and the user and item vocabularies written."""

    STAGE: ClassVar[str] = "vocab"

    events_ds: list[str] | None = None
    users: VocabGrowth | None = None
    n_users: int | None = None
    items: VocabGrowth | None = None
    n_items: int | None = None
    rows_in: int | None = None
    rows_out: int | None = None


class SessionizeManifest(StageManifest):
    """``sessionize``: the events days read and the sessions built from them."""

    STAGE: ClassVar[str] = "sessionize"

    events_ds: list[str] | None = None
    rows_in: int | None = None
    rows_duplicate: int | None = None
    rows_out: int | None = None
    events_in_sessions: int | None = None
    users: int | None = None
    sessions: int | None = None
    mean_session_length: float | None = None
    max_session_length: int | None = None


class SplitPart(BaseModel):
    """Rows and users of one split part (train, valid or test)."""

    rows: int
    users: int


class SplitProtocol(BaseModel):
    """One protocol's settings and parts."""

    settings: dict[str, Any]
    train: SplitPart
    valid: SplitPart
    test: SplitPart


class SplitManifest(StageManifest):
    """``split``: interactions read and, per protocol, the rows of each part."""

    STAGE: ClassVar[str] = "split"

    rows_in: int | None = None
    rows_repeat_dropped: int | None = None
    protocols: dict[str, SplitProtocol] | None = None
    rows_out: int | None = None


class ShardRows(BaseModel):
    """One exported file and its row count."""

    file: str
    rows: int


class ExportTable(BaseModel):
    """One exported sample table of a protocol: its lake table, rows and files."""

    table: str
    rows: int
    files: list[ShardRows]


class ExportSamples(BaseModel):
    """What export wrote for one protocol: its train split's figures and each sample kind."""

    users: int
    interactions: int
    pairwise: ExportTable | None = None
    pointwise: ExportTable | None = None
    sequence: ExportTable | None = None
    bag: ExportTable | None = None
    # With train.warm_start: the samples of the recent window (users and interactions counted
    # there too) and the window's first instant (ISO-8601, UTC).
    recent: ExportSamples | None = None
    since: str | None = None
    last_context_users: int | None = None  # rows of last_context (users with train events)

    def kind(self, name: str) -> ExportTable | None:
        """The table of sample kind ``name`` (None when it was not exported)."""
        if name not in ("pairwise", "pointwise", "sequence", "bag"):
            return None
        return getattr(self, name, None)


class ExportManifest(StageManifest):
    """``export``: the settings, vocabulary sizes and sample tables of every protocol."""

    STAGE: ClassVar[str] = "export"

    settings: dict[str, Any] | None = None
    stride: int | None = None
    planned_world_size: int | None = None
    files_per_table: int | None = None  # the least; larger tables get more (see each table)
    n_items: int | None = None
    n_users: int | None = None
    user_index_size: int | None = None
    # features.context's names, the order of the samples' context_idx and of last_context.
    context: list[str] | None = None
    samples: dict[str, ExportSamples] | None = None
    rows_in: int | None = None
    rows_out: int | None = None


MANIFEST_MODELS: dict[str, type[StageManifest]] = {
    model.STAGE: model
    for model in (
        CleanManifest,
        CatalogManifest,
        FeaturesManifest,
        VocabManifest,
        SessionizeManifest,
        SplitManifest,
        ExportManifest,
    )
}


def read_stage_manifest(root: LocationLike, stage: str, ds: str) -> StageManifest:
    """The manifest of ``stage`` for ``ds``, typed by its stage's model where it has one."""
    return MANIFEST_MODELS.get(stage, StageManifest).parse(read_manifest(root, stage, ds))
