"""Versioned lake partitions and the one commit point of a stage run.

A stage writes each output partition into a new folder
``<root>/lake/<table>/<partition>/v=<UTC time>-<id>/`` that nobody reads yet. Its manifest,
written in one atomic file replace when the run succeeds, lists those folders under
``outputs``: that write is the run's only commit point. Readers resolve a partition through
the producing stage's manifest, so all of a run's tables (``events`` with ``quarantine``, the
three splits of every protocol, ...) and its manifest become visible together or not at all,
and no folder is ever renamed.

Version folders that no manifest references (a failed or killed run's) are orphans; sweeping
removes them, and keeps the current versions plus the previous run's (a reader that resolved
the old manifest a moment before a commit can still finish reading).

This module needs no JVM and no pyspark.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from recpipe.errors import MissingInputError
from recpipe.layout import (
    PRODUCERS,
    lake_base,
    manifest_path,
    partition_name,
    scratch_root,
)
from recpipe.schema import DS

log = logging.getLogger(__name__)

VERSION_PREFIX = "v="

# Leftovers of the rename-based layout and of killed scratch writes, removed by a sweep.
LEGACY_LEFTOVERS = ("_staging", "_trash")


def producer_of(table: str) -> str:
    """The stage whose manifest commits ``table``."""
    try:
        return PRODUCERS[table]
    except KeyError:
        raise ValueError(f"unknown lake table {table!r}") from None


def tables_of(stage: str) -> list[str]:
    """Lake tables committed by ``stage`` (empty for stages without lake outputs)."""
    return [table for table, producer in PRODUCERS.items() if producer == stage]






def new_version_name() -> str:
    """A fresh ``v=<UTC time>-<id>`` folder name; name order is creation order."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"


def output_record(root: Path, folder: Path) -> dict[str, Any]:
    """What a manifest records of one written version: path relative to root, rows, files.

    Row counts come from the Parquet footers, so recording costs no Spark job; each file's
    footer digest lets readers check it is the file that was committed.
    """
    import pyarrow.parquet as pq

    from recpipe.parquet_files import data_files, footer_sha256

    files = [
        {
            "file": p.name,
            "bytes": p.stat().st_size,
            "rows": pq.ParquetFile(p).metadata.num_rows,
            "footer_sha256": footer_sha256(p),
        }
        for p in data_files(folder)
    ]
    return {
        "path": str(Path(folder).relative_to(root)),
        "rows": sum(f["rows"] for f in files),
        "files": files,
    }



def current_record(root: Path, table: str, partition: Mapping[str, str]) -> dict[str, Any] | None:
    """The committed version record (path, rows, files) of a partition, or None."""
    path = manifest_path(root, producer_of(table), partition[DS])
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return committed(manifest, table, partition_name(partition))


def current_version(root: Path, table: str, partition: Mapping[str, str]) -> Path:
    """Folder of the current version of a partition; MissingInputError naming the fix if none."""
    record = current_record(root, table, partition)
    if record is None:
        raise MissingInputError(
            f"no {table} partition {partition_name(partition)}: run "
            f"`recpipe {producer_of(table)} --ds {partition[DS]}` first"
        )
    return Path(root) / record["path"]


def committed(manifest: Mapping[str, Any] | None, table: str, partition: str) -> Any:
    """The output record of ``table``/``partition`` in a successful manifest, or None."""
    if not manifest or manifest.get("status") != "ok":
        return None
    return manifest.get("outputs", {}).get(table, {}).get(partition)


def referenced_paths(manifest: Mapping[str, Any] | None) -> set[str]:
    """Version folders (relative to root) a manifest keeps alive: current and previous."""
    if not manifest:
        return set()
    paths: set[str] = set()
    for key in ("outputs", "previous_outputs"):
        for parts in manifest.get(key, {}).values():
            paths.update(record["path"] for record in parts.values())
    return paths


def _version_folders(root: Path, table: str, ds: str) -> Iterable[Path]:
    base = lake_base(root) / table / f"{DS}={ds}"
    if base.is_dir():
        yield from (p for p in base.rglob(f"{VERSION_PREFIX}*") if p.is_dir())


def sweep_run(root: Path, stage: str, ds: str, manifest: Mapping[str, Any] | None) -> list[Path]:
    """Delete version folders of ``stage``'s tables for ``ds`` that ``manifest`` does not keep.

    Call only while holding the (stage, ds) lock: an unreferenced folder then belongs to no
    live run.
    """
    keep = referenced_paths(manifest)
    removed = []
    for table in tables_of(stage):
        for folder in list(_version_folders(root, table, ds)):
            if str(folder.relative_to(root)) not in keep:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    # Scratch space of this (stage, ds), e.g. clean's parsed copy of the raw input.
    for scratch in scratch_root(root).glob(f"{stage}-{ds}-*"):
        shutil.rmtree(scratch, ignore_errors=True)
        removed.append(scratch)
    if removed:
        log.info("%s ds=%s: removed %d unreferenced versions", stage, ds, len(removed))
    return removed


def sweep_leftovers(root: Path) -> list[Path]:
    """Delete staging/trash folders of the rename-based layout and scratch under ``tmp/``."""
    removed = []
    base = lake_base(root)
    if base.is_dir():
        for table in base.iterdir():
            for name in LEGACY_LEFTOVERS:
                if (table / name).is_dir():
                    shutil.rmtree(table / name, ignore_errors=True)
                    removed.append(table / name)
    return removed
