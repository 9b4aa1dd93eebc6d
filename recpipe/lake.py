"""Lake tables: versioned Parquet partitions under ``<root>/lake/<table>/<partition>/v=<id>``.

A stage writes each partition into a new version folder and registers it with its
:class:`~recpipe.manifest.StageRun`; the run's manifest, written when it succeeds, is the
commit point that makes every version it wrote current at once (:mod:`recpipe.commit`).
Readers resolve partitions through that manifest, so they see the complete old or the complete
new state, never a half-written or missing partition, and nothing is ever renamed.

Stages write through :func:`transaction`, the one seam of that protocol: stage, reconcile, then
publish at the commit point, or discard on any failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar

from pyspark.sql import DataFrame, SparkSession

from recpipe import storage
from recpipe.commit import (
    VERSION_PREFIX,
    current_record,
    current_version,
    new_version_name,
    producer_of,
)
from recpipe.config import Config
from recpipe.errors import MissingInputError, java_error_line
from recpipe.faults import kill_point
from recpipe.lake_catalog import MetastoreError, check_metastore, register_commit
from recpipe.layout import lake_base, manifest_path, partition_folder, partition_name
from recpipe.manifest import StageManifest, StageRun
from recpipe.reconcile import ReconciliationError
from recpipe.schema import DS
from recpipe.storage import Location, LocationLike, as_location

__all__ = [
    "Lake",
    "StagedPartition",
    "Transaction",
    "history_ds",
    "partition_name",
    "transaction",
]

M = TypeVar("M", bound=StageManifest)

_VERSION_COLUMN = VERSION_PREFIX.rstrip("=")


@dataclass
class StagedPartition:
    """A fully written, not yet committed version of one partition."""

    lake: Lake
    table: str
    partition: dict[str, str]
    path: Location

    def read(self, spark: SparkSession) -> DataFrame:
        """The staged files, read back from disk (for reconciliation before publishing)."""
        return spark.read.parquet(self.path.uri)

    def count(self, spark: SparkSession) -> int:
        """Rows in the staged files."""
        return self.read(spark).count()

    def publish(self, run: StageRun) -> dict[str, Any]:
        """Hand the version to ``run``: it becomes current when the run commits.

        Returns the recorded path, row count (from the Parquet footers) and files.
        """
        return run.add_output(self.table, partition_name(self.partition), self.path)

    def discard(self) -> None:
        """Drop the staged files without publishing."""
        storage.remove_tree(self.path)


class Lake:
    """Versioned, manifest-committed partitioned Parquet tables under ``<root>/lake``."""

    def __init__(self, root: LocationLike) -> None:
        self.root = as_location(root)
        self.base = lake_base(self.root)

    def table_path(self, table: str) -> Location:
        """Folder of ``table``."""
        return self.base / table

    def current(self, table: str, partition: Mapping[str, str]) -> dict[str, Any] | None:
        """The committed version record (path, rows, files) of a partition, or None."""
        return current_record(self.root, table, partition)

    def partition_path(self, table: str, partition: Mapping[str, str]) -> Location:
        """Folder of the current version of one partition; MissingInputError if none."""
        return current_version(self.root, table, partition)

    def exists(self, table: str, partition: Mapping[str, str]) -> bool:
        """Whether the partition has been committed."""
        return self.current(table, partition) is not None

    def require(self, table: str, ds: str, producer: str | None = None) -> None:
        """Fail with the command to run when ``table`` has no partition ``ds``."""
        if not self.exists(table, {DS: ds}):
            raise MissingInputError(
                f"no {table} partition ds={ds}: run `recpipe {producer or producer_of(table)} "
                f"--ds {ds}` first"
            )

    def ds_values(self, table: str) -> list[str]:
        """Committed ``ds`` values of ``table``, sorted ascending."""
        folder = manifest_path(self.root, producer_of(table), "x").parent
        values = []
        for path in storage.glob(folder, f"{DS}=*.json"):
            manifest = StageManifest.parse(storage.read_json(path))
            if manifest.ok and (manifest.outputs or {}).get(table):
                values.append(path.name[len(DS) + 1 : -len(".json")])
        return values

    def history(self, table: str, ds: str, days: int | None) -> list[str]:
        """Committed ``ds`` values of ``table`` in the window ending at ``ds`` (all when None).

        ``ds`` itself must be there, and so must every day between the window's first
        committed day and ``ds``: a missing day inside the window is an error naming the
        command that fills it, never a silently shorter history.
        """
        self.require(table, ds)
        chosen = history_ds(self.ds_values(table), ds, days)
        gaps = missing_days(chosen, ds)
        if gaps:
            shown = ", ".join(gaps[:5]) + (f" and {len(gaps) - 5} more" if len(gaps) > 5 else "")
            raise MissingInputError(
                f"the history of ds={ds} misses {table} for {shown} (have {chosen[0]}..{ds}): "
                f"run `recpipe {producer_of(table)} --ds {gaps[0]}` (with that day's input)"
            )
        return chosen

    def stage(
        self,
        df: DataFrame,
        table: str,
        partition: Mapping[str, str],
        sidecar: Mapping[str, str] | None = None,
    ) -> StagedPartition:
        """Write ``df`` (no partition columns) as a new version; ``sidecar`` files ride along.

        Files whose names start with ``_`` are ignored by Spark and pyarrow readers.
        """
        clash = set(partition) & set(df.columns)
        if clash:
            raise ValueError(
                f"partition columns {sorted(clash)} must not be in the data of {table}"
            )
        version = self.new_version(table, partition)
        df.write.mode("error").parquet(version.uri)
        for name, text in (sidecar or {}).items():
            storage.write_text(version / name, text)
        kill_point(f"written:{table}")
        return StagedPartition(self, table, dict(partition), version)

    def new_version(self, table: str, partition: Mapping[str, str]) -> Location:
        """A fresh version folder of one partition, for writers other than Spark (training
        ranks): :meth:`staged` hands it to a run once written."""
        producer_of(table)  # an unknown table fails before any write
        return partition_folder(self.root, table, partition) / new_version_name()

    def staged(
        self, table: str, partition: Mapping[str, str], folder: LocationLike
    ) -> StagedPartition:
        """A version folder written outside :meth:`stage` (see :meth:`new_version`)."""
        return StagedPartition(self, table, dict(partition), as_location(folder))

    def read(
        self,
        spark: SparkSession,
        table: str,
        partitions: Sequence[Mapping[str, str]],
    ) -> DataFrame:
        """Read committed partitions of ``table``; partition keys come back as string columns."""
        if not partitions:
            raise ValueError(f"no partitions of '{table}' requested")
        missing = [p for p in partitions if not self.exists(table, p)]
        if missing:
            names = ", ".join(partition_name(p) for p in missing)
            raise MissingInputError(
                f"table '{table}' has no partition {names} under {self.base}: run "
                f"`recpipe {producer_of(table)}` for it first"
            )
        paths = [self.partition_path(table, p).uri for p in partitions]
        # Partition discovery below basePath yields the keys and the version (dropped).
        frame = spark.read.option("basePath", self.table_path(table).uri).parquet(*paths)
        return frame.drop(_VERSION_COLUMN)


def history_ds(available: Sequence[str], ds: str, days: int | None) -> list[str]:
    """The ``ds`` values in ``(ds - days, ds]`` (all up to ``ds`` when ``days`` is None)."""
    end = dt.date.fromisoformat(ds)
    start = None if days is None else end - dt.timedelta(days=days)
    chosen = []
    for value in available:
        day = dt.date.fromisoformat(value)
        if day <= end and (start is None or day > start):
            chosen.append(value)
    return chosen


def missing_days(chosen: Sequence[str], ds: str) -> list[str]:
    """Days between the first of ``chosen`` and ``ds`` that ``chosen`` lacks."""
    if not chosen:
        return [ds]
    have = set(chosen)
    day, end = dt.date.fromisoformat(chosen[0]), dt.date.fromisoformat(ds)
    gaps = []
    while day <= end:
        if day.isoformat() not in have:
            gaps.append(day.isoformat())
        day += dt.timedelta(days=1)
    return gaps


@dataclass
class Transaction(Generic[M]):
    """One stage run's lake writes: stage, reconcile, then publish at the commit point.

    Use through :func:`transaction`. On entry it opens the :class:`StageRun` (the (stage, ds)
    lock, the sweep of versions a killed run left). The stage then writes partitions with
    :meth:`stage`, checks what is on disk with :meth:`reconcile`, and fills :attr:`record`. On a
    clean exit every staged partition is published and the manifest, naming them all, is
    written: that single atomic write is the commit point. On any exception, or staged output
    that no reconciliation followed, every staged partition is discarded, the failure goes to
    ``attempts/`` and the served partitions and manifest stay as they were.
    """

    config: Config
    stage_name: str
    ds: str
    record: M
    lake: Lake = field(init=False)
    run: StageRun = field(init=False)
    staged: list[StagedPartition] = field(init=False, default_factory=list)
    _unreconciled: list[StagedPartition] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.lake = Lake(self.config.root)
        self.run = StageRun(self.config, self.stage_name, self.ds)

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as written (committed, or the failed run's record), after exit."""
        return self.run.manifest

    def stage(
        self, df: DataFrame, table: str, partition: Mapping[str, str] | None = None
    ) -> StagedPartition:
        """Write ``df`` as a new, unpublished version of ``table`` (partition ``ds`` by default).

        The run's resolved config rides along as ``_config.yaml``. The version is published at
        the commit point, after a :meth:`reconcile` that follows it.
        """
        part = self.lake.stage(
            df, table, partition or {DS: self.ds}, {"_config.yaml": self.config.to_yaml()}
        )
        self.staged.append(part)
        self._unreconciled.append(part)
        return part

    def reconcile(
        self,
        mismatch: str | None,
        error: Callable[[str], BaseException] = ReconciliationError,
    ) -> None:
        """The reconciliation check of everything staged so far, from what is on disk.

        ``mismatch`` describes what does not add up (None when all does): the run then fails
        with ``error(mismatch)`` and nothing is published.
        """
        if mismatch:
            raise error(mismatch)
        self._unreconciled.clear()

    def __enter__(self) -> Transaction[M]:
        check_metastore(self.config)  # an unreachable metastore fails before any write
        self.run.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = None
        if exc is None:
            try:
                self._publish()
            except BaseException as caught:  # recorded as the run's failure, then re-raised
                failure = caught
                exc_type, exc, tb = type(caught), caught, caught.__traceback__
        if exc is not None:
            for part in self.staged:
                part.discard()
        self.run.record.update(self.record.stage_fields())
        self.run.__exit__(exc_type, exc, tb)  # the commit point, or the attempt record
        if failure is not None:
            raise failure
        if exc is None:
            self._register()

    def _register(self) -> None:
        """The metastore follows the commit: this stage's partitions at their new versions."""
        try:
            register_commit(self.config, self.stage_name)
        except Exception as exc:  # committed already: say so, and how it gets repaired
            raise MetastoreError(
                f"{self.stage_name} ds={self.ds} committed, but the metastore was not updated "
                f"({java_error_line(exc)}); the next run or `recpipe sql` repairs it"
            ) from None

    def _publish(self) -> None:
        if self._unreconciled:
            names = ", ".join(
                f"{p.table} {partition_name(p.partition)}" for p in self._unreconciled
            )
            raise ReconciliationError(
                f"{self.stage_name} ds={self.ds}: {names} staged without a reconciliation "
                "check after it; nothing was published"
            )
        for part in self.staged:
            part.publish(self.run)


def transaction(config: Config, stage: str, ds: str, record: M) -> Transaction[M]:
    """Run ``stage`` for ``ds`` as one lake transaction; ``record`` is its typed manifest.

    ::

        with transaction(config, "vocab", ds, VocabManifest()) as tx:
            part = tx.stage(frame, "vocab_users")
            tx.reconcile(None if part.count(spark) == expected else "rows differ")
            tx.record.rows_out = expected
        return tx.manifest
    """
    return Transaction(config, stage, ds, record)
