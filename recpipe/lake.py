"""Lake tables: Parquet folders under ``<root>/lake/<table>/ds=<ds>[/k=v]``.

A partition is written to a staging folder first and only then swapped into place, so a
reader never sees a half-written partition and a re-run replaces the old one exactly.
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from recpipe.errors import MissingInputError
from recpipe.schema import DS


def file_uri(path: Path) -> str:
    """``file://`` URI for Spark, not percent-encoded (Hadoop paths take ``=`` literally)."""
    # Explicit file: URIs keep Spark on the same filesystem as the manifests, whatever
    # fs.defaultFS a cluster sets.
    return f"file://{Path(path).resolve()}"


def partition_name(partition: Mapping[str, str]) -> str:
    """``{"ds": "2026-11-22", "protocol": "x"}`` -> ``ds=2026-11-22/protocol=x``."""
    return "/".join(f"{key}={value}" for key, value in partition.items())


@dataclass
class StagedPartition:
    """A fully written partition waiting in the staging area."""

    lake: Lake
    table: str
    partition: dict[str, str]
    path: Path

    def read(self, spark: SparkSession) -> DataFrame:
        """The staged files, read back from disk (for reconciliation before publishing)."""
        return spark.read.parquet(file_uri(self.path))

    def count(self, spark: SparkSession) -> int:
        """Rows in the staged files."""
        return self.read(spark).count()

    def publish(self) -> Path:
        """Swap the staged folder in as the partition, replacing any previous version."""
        final = self.lake.partition_path(self.table, self.partition)
        final.parent.mkdir(parents=True, exist_ok=True)
        trash = self.lake.table_path(self.table) / "_trash" / uuid.uuid4().hex
        if final.exists():
            trash.parent.mkdir(parents=True, exist_ok=True)
            final.rename(trash)
        self.path.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
        return final

    def discard(self) -> None:
        """Drop the staged files without publishing."""
        shutil.rmtree(self.path, ignore_errors=True)


class Lake:
    """Path-based partitioned Parquet tables under ``<root>/lake``."""

    def __init__(self, root: Path) -> None:
        self.base = Path(root) / "lake"

    def table_path(self, table: str) -> Path:
        """Folder of ``table``."""
        return self.base / table

    def partition_path(self, table: str, partition: Mapping[str, str]) -> Path:
        """Folder of one partition of ``table``."""
        return self.table_path(table) / partition_name(partition)

    def exists(self, table: str, partition: Mapping[str, str]) -> bool:
        """Whether the partition has been published."""
        return self.partition_path(table, partition).is_dir()

    def require(self, table: str, ds: str, producer: str) -> None:
        """Fail with the command to run when ``table`` has no partition ``ds``."""
        if not self.exists(table, {DS: ds}):
            raise MissingInputError(
                f"no {table} partition ds={ds}: run `recpipe {producer} --ds {ds}` first"
            )

    def ds_values(self, table: str) -> list[str]:
        """Published ``ds`` values of ``table``, sorted ascending."""
        folder = self.table_path(table)
        if not folder.is_dir():
            return []
        return sorted(p.name[len(DS) + 1 :] for p in folder.glob(f"{DS}=*") if p.is_dir())

    def stage(
        self,
        df: DataFrame,
        table: str,
        partition: Mapping[str, str],
        sidecar: Mapping[str, str] | None = None,
    ) -> StagedPartition:
        """Write ``df`` (no partition columns) to a staging folder; ``sidecar`` files ride along.

        Files whose names start with ``_`` are ignored by Spark and pyarrow readers.
        """
        clash = set(partition) & set(df.columns)
        if clash:
            raise ValueError(
                f"partition columns {sorted(clash)} must not be in the data of {table}"
            )
        tag = partition_name(partition).replace("/", "_")
        staging = self.table_path(table) / "_staging" / f"{tag}-{uuid.uuid4().hex}"
        df.write.mode("error").parquet(file_uri(staging))
        for name, text in (sidecar or {}).items():
            (staging / name).write_text(text)
        return StagedPartition(self, table, dict(partition), staging)

    def read(
        self,
        spark: SparkSession,
        table: str,
        partitions: Sequence[Mapping[str, str]],
    ) -> DataFrame:
        """Read published partitions of ``table``; partition keys come back as string columns."""
        missing = [p for p in partitions if not self.exists(table, p)]
        if missing:
            names = ", ".join(partition_name(p) for p in missing)
            raise MissingInputError(f"table '{table}' has no partition {names} under {self.base}")
        if not partitions:
            raise ValueError(f"no partitions of '{table}' requested")
        paths = [file_uri(self.partition_path(table, p)) for p in partitions]
        return spark.read.option("basePath", file_uri(self.table_path(table))).parquet(*paths)


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
