"""Downstream reconciliation: what a stage reads must be what the producing stage wrote.

Each stage's manifest records the rows it published. A consumer counts what it actually read,
per ``ds``, and compares (reading the producer's manifest through its typed model): a deleted
or added file, a partition replaced behind the manifest's back, or a producer whose last run
failed is an error naming the partition and the command that fixes it, never a silently
shorter history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pyspark.sql import DataFrame

from recpipe.errors import RecpipeError
from recpipe.manifest import StageManifest, read_stage_manifest
from recpipe.schema import DS
from recpipe.storage import LocationLike


class ReconciliationError(RecpipeError):
    """Rows read differ from what the producing stage's manifest recorded, or rows staged from
    what the stage read (then nothing is published)."""


# Picks a row count out of the producer's typed manifest (e.g. ``SplitManifest``).
RowCount = Callable[[Any], int | None]


def _rows_out(manifest: Any) -> int | None:
    return manifest.rows_out


def expected_rows(root: LocationLike, producer: str, ds: str, count: RowCount) -> int:
    """Rows the last successful ``producer`` run for ``ds`` published (``count`` picks them)."""
    manifest: StageManifest = read_stage_manifest(root, producer, ds)
    if not manifest.ok:
        raise ReconciliationError(
            f"the last `recpipe {producer} --ds {ds}` run ended {manifest.status!r}; "
            f"its table cannot be vouched for: re-run it first"
        )
    try:
        recorded = count(manifest)
    except (AttributeError, KeyError, TypeError):  # a part or protocol the run did not write
        recorded = None
    if recorded is None:
        raise ReconciliationError(
            f"the `recpipe {producer} --ds {ds}` manifest records no row count for this read "
            "(run with other settings?): re-run it"
        )
    return int(recorded)


def check_rows(
    table: str, ds: str, read: int, root: LocationLike, producer: str,
    count: RowCount = _rows_out,
) -> None:  # fmt: skip
    """Fail unless ``read`` rows of ``table`` ds equal what ``producer``'s manifest recorded."""
    expected = expected_rows(root, producer, ds, count)
    if read != expected:
        raise ReconciliationError(
            f"{table} ds={ds}: read {read} rows, but `{producer}` published {expected} "
            f"(a file was removed, added or replaced since): re-run `recpipe {producer} "
            f"--ds {ds}`"
        )


def check_rows_per_ds(
    frame: DataFrame, table: str, days: Sequence[str], root: LocationLike, producer: str,
    count: RowCount = _rows_out,
) -> dict[str, int]:  # fmt: skip
    """Count ``frame`` (with a ``ds`` column) per day and check each against ``producer``.

    One aggregation job; returns the counts by ``ds``.
    """
    counted = {row[DS]: int(row["count"]) for row in frame.groupBy(DS).count().collect()}
    for day in days:
        check_rows(table, day, counted.get(day, 0), root, producer, count)
    return counted
