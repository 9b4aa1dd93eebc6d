"""``recpipe sweep``: remove what killed or failed runs left behind under ``paths.root``.

Each (stage, ds) is swept under its lock, so a run in progress is never touched (it is skipped
and reported). Removed: lake versions no manifest references (the current and previous
versions stay), scratch folders of that (stage, ds), and the ``_staging``/``_trash`` folders of
the rename-based layout of earlier releases. Every run also sweeps its own (stage, ds) when it
starts and after it commits; this command covers days that are never re-run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from recpipe import storage
from recpipe.commit import (
    producer_of,
    referenced_paths,
    sweep_leftovers,
    sweep_run,
    tables_of,
    version_folders,
)
from recpipe.layout import (
    PRODUCERS,
    USER_ROWS_PREFIX,
    lake_base,
    lock_path,
    manifest_path,
    run_scratch,
    scratch_root,
)
from recpipe.locks import StageLock, StageLockedError
from recpipe.schema import DS
from recpipe.storage import Location, LocationLike, as_location


def _size(path: Location) -> int:
    if storage.is_file(path):
        return storage.size(path)
    return sum(entry.size for entry in storage.list_dir(path, recursive=True))


def _runs_with_state(root: Location) -> set[tuple[str, str]]:
    """(stage, ds) pairs that have lake versions or scratch folders on disk."""
    pairs = set()
    base = lake_base(root)
    tables = dict(PRODUCERS)
    for folder in storage.glob(base, f"{USER_ROWS_PREFIX}*"):
        tables[folder.name] = producer_of(folder.name)
    for table, stage in tables.items():
        for folder in storage.glob(base / table, f"{DS}=*"):
            pairs.add((stage, folder.name[len(DS) + 1 :]))
    stages = set(tables.values())
    for entry in storage.list_dir(scratch_root(root)):
        # <stage>-<YYYY-MM-DD>-<id>
        stage, _, rest = entry.name.partition("-")
        if stage in stages and len(rest) > 11:
            pairs.add((stage, rest[:10]))
    return pairs


def sweep_root(root: LocationLike, ds: str | None = None) -> list[dict[str, Any]]:
    """Sweep every (stage, ds) with state under ``root`` (only ``ds`` when given).

    Returns one summary row per (stage, ds) that had something removed or was skipped.
    """
    root = as_location(root)
    rows: list[dict[str, Any]] = []
    for stage, day in sorted(_runs_with_state(root)):
        if ds is not None and day != ds:
            continue
        lock = StageLock(lock_path(root, stage, day), stage, day, f"sweep-{uuid.uuid4().hex[:8]}")
        try:
            lock.acquire()
        except StageLockedError as exc:
            rows.append({"stage": stage, "ds": day, "removed": 0, "bytes": 0, "note": str(exc)})
            continue
        try:
            path = manifest_path(root, stage, day)
            manifest = storage.read_json(path) if storage.is_file(path) else None
            doomed = _doomed_sizes(root, stage, day, manifest)
            removed = sweep_run(root, stage, day, manifest)
        finally:
            lock.release()
        if removed:
            freed = sum(doomed.get(p, 0) for p in removed)
            rows.append({"stage": stage, "ds": day, "removed": len(removed), "bytes": freed,
                         "note": ""})  # fmt: skip
    if ds is None:
        leftovers = sweep_leftovers(root)
        if leftovers:
            rows.append({"stage": "(legacy)", "ds": "", "removed": len(leftovers), "bytes": 0,
                         "note": "_staging/_trash folders"})  # fmt: skip
    return rows


def _doomed_sizes(
    root: Location, stage: str, ds: str, manifest: dict[str, Any] | None
) -> dict[Location, int]:
    """Sizes of what :func:`sweep_run` is about to remove (measured before it goes)."""
    keep = referenced_paths(manifest)
    sizes = {}
    for table in tables_of(stage):
        for folder in version_folders(root, table, ds):
            if folder.relative_to(root) not in keep:
                sizes[folder] = _size(folder)
    for scratch in storage.glob(scratch_root(root), f"{stage}-{ds}-*"):
        sizes[scratch] = _size(scratch)
    return sizes


@contextmanager
def scratch_folder(root: LocationLike, stage: str, ds: str) -> Iterator[Location]:
    """A fresh scratch folder of one run, removed on exit (a killed run's by the next sweep)."""
    folder = run_scratch(root, stage, ds, uuid.uuid4().hex)
    try:
        yield folder
    finally:
        # Best effort: a folder left behind is the sweep's, and a failure to remove it must not
        # hide the run's own outcome.
        with suppress(OSError):
            storage.remove_tree(folder)
