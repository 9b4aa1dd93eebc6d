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
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from recpipe import storage
from recpipe.errors import MissingInputError
from recpipe.layout import (
    PRODUCERS,
    USER_ROWS_PREFIX,
    lake_base,
    manifest_path,
    partition_name,
    scratch_root,
    user_rows_table,
)
from recpipe.schema import DS
from recpipe.storage import Location, LocationLike, as_location

log = logging.getLogger(__name__)

VERSION_PREFIX = "v="
TRAIN_STAGE_PREFIX = "train-"  # train-<model>: a model's training stage

# Leftovers of the rename-based layout and of killed scratch writes, removed by a sweep.
LEGACY_LEFTOVERS = ("_staging", "_trash")


def producer_of(table: str) -> str:
    """The stage whose manifest commits ``table``."""
    if table in PRODUCERS:
        return PRODUCERS[table]
    model = table.removeprefix(USER_ROWS_PREFIX)
    if table.startswith(USER_ROWS_PREFIX) and model:
        return f"{TRAIN_STAGE_PREFIX}{model}"
    raise ValueError(f"unknown lake table {table!r}")


def tables_of(stage: str) -> list[str]:
    """Lake tables committed by ``stage`` (empty for stages without lake outputs)."""
    tables = [table for table, producer in PRODUCERS.items() if producer == stage]
    model = stage.removeprefix(TRAIN_STAGE_PREFIX)
    if stage.startswith(TRAIN_STAGE_PREFIX) and model:
        tables.append(user_rows_table(model))
    return tables


def new_version_name() -> str:
    """A fresh ``v=<UTC time>-<id>`` folder name; name order is creation order."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"


def output_record(root: LocationLike, folder: Location) -> dict[str, Any]:
    """What a manifest records of one written version: path relative to root, rows, files.

    Row counts come from the Parquet footers, so recording costs no Spark job; each file's
    footer digest lets readers check it is the file that was committed.
    """
    import pyarrow.parquet as pq

    from recpipe.parquet_files import data_files, footer_sha256

    files = []
    for p in data_files(folder):
        with storage.open_input(p) as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        files.append(
            {
                "file": p.name,
                "bytes": storage.size(p),
                "rows": rows,
                "footer_sha256": footer_sha256(p),
            }
        )
    return {
        "path": folder.relative_to(as_location(root)),
        "rows": sum(f["rows"] for f in files),
        "files": files,
    }


def current_record(
    root: LocationLike, table: str, partition: Mapping[str, str]
) -> dict[str, Any] | None:
    """The committed version record (path, rows, files) of a partition, or None."""
    path = manifest_path(root, producer_of(table), partition[DS])
    try:
        manifest = storage.read_json(path)
    except FileNotFoundError:
        return None
    return committed(manifest, table, partition_name(partition))


def current_version(root: LocationLike, table: str, partition: Mapping[str, str]) -> Location:
    """Folder of the current version of a partition; MissingInputError naming the fix if none."""
    record = current_record(root, table, partition)
    if record is None:
        raise MissingInputError(
            f"no {table} partition {partition_name(partition)}: run "
            f"`recpipe {producer_of(table)} --ds {partition[DS]}` first"
        )
    return as_location(root) / record["path"]


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


def version_folders(root: LocationLike, table: str, ds: str) -> Iterable[Location]:
    """Version folders of ``table``'s partitions for ``ds`` (committed or not)."""
    base = lake_base(root) / table / f"{DS}={ds}"
    for entry in storage.list_dir(base, recursive=True):
        # Versions sit directly below the partition folder(s); never look inside one.
        if entry.is_dir and entry.name.startswith(VERSION_PREFIX):
            above = entry.location.relative_to(base).split("/")[:-1]
            if not any(part.startswith(VERSION_PREFIX) for part in above):
                yield entry.location


def sweep_run(
    root: LocationLike, stage: str, ds: str, manifest: Mapping[str, Any] | None
) -> list[Location]:
    """Delete version folders of ``stage``'s tables for ``ds`` that ``manifest`` does not keep.

    Call only while holding the (stage, ds) lock: an unreferenced folder then belongs to no
    live run.
    """
    keep = referenced_paths(manifest)
    root = as_location(root)
    removed = []
    for table in tables_of(stage):
        for folder in list(version_folders(root, table, ds)):
            if folder.relative_to(root) not in keep:
                storage.remove_tree(folder)
                removed.append(folder)
    # Scratch space of this (stage, ds), e.g. clean's parsed copy of the raw input.
    for scratch in storage.glob(scratch_root(root), f"{stage}-{ds}-*"):
        storage.remove_tree(scratch)
        removed.append(scratch)
    if removed:
        log.info("%s ds=%s: removed %d unreferenced versions", stage, ds, len(removed))
    return removed


def sweep_leftovers(root: LocationLike) -> list[Location]:
    """Delete staging/trash folders of the rename-based layout and scratch under ``tmp/``."""
    removed = []
    for table in storage.list_dir(lake_base(root)):
        for name in LEGACY_LEFTOVERS:
            if table.is_dir and storage.is_dir(table.location / name):
                storage.remove_tree(table.location / name)
                removed.append(table.location / name)
    return removed
