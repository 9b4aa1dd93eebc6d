"""Stable dense integer indexes for ids: existing ids keep theirs, new ids get the next ones."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recpipe.spark import one_row

FIRST_SEEN = "first_seen"
FIRST_SEEN_DS = "first_seen_ds"
# Index 0 is reserved for padding in sequence models; real ids start at 1.
FIRST_INDEX = 1
POSITION = "_position"
_PART, _ID = "_part", "_row_id"


def extend_vocab(
    seen: DataFrame,
    existing: DataFrame | None,
    *,
    id_col: str,
    idx_col: str,
    ds: str,
) -> DataFrame:
    """Return the full mapping ``(id_col, idx_col, first_seen_ds)`` after adding new ids.

    ``seen`` holds ``id_col`` and ``first_seen`` (earliest event time); new ids are numbered
    after the largest existing index in order of (first_seen, id), so the result is
    deterministic. Rows of ``existing`` are returned unchanged.
    """
    if existing is None:
        start = FIRST_INDEX
        new = seen
    else:
        largest = one_row(existing.agg(F.max(idx_col)), f"{idx_col} max")
        start = (largest[0] or FIRST_INDEX - 1) + 1
        new = seen.join(existing.select(id_col), on=id_col, how="left_anti")
    numbered = number_in_order(new, [FIRST_SEEN, id_col], start).select(
        id_col, F.col(POSITION).cast("int").alias(idx_col), F.lit(ds).alias(FIRST_SEEN_DS)
    )
    if existing is None:
        return numbered
    return existing.select(id_col, idx_col, FIRST_SEEN_DS).unionByName(numbered)


def number_in_order(frame: DataFrame, order: list[str], start: int) -> DataFrame:
    """``frame`` plus ``POSITION``: ``start``, ``start + 1``, ... in the total order ``order``,
    numbered partition by partition (no single-partition window however many rows).

    The rows are range-partitioned and sorted once and checkpointed, so the per-partition
    counts and the numbering read the same partitions; each row's number is the rows before
    its partition plus its place in it (``monotonically_increasing_id`` keeps the place in
    its low 33 bits).
    """
    tagged = (
        frame.orderBy(*order)
        .withColumn(_PART, F.spark_partition_id())
        .withColumn(_ID, F.monotonically_increasing_id())
        .localCheckpoint(eager=True)
    )
    counts = {
        row[_PART]: row["n"]
        for row in tagged.groupBy(_PART).agg(F.count(F.lit(1)).alias("n")).collect()
    }
    offsets = [start]
    for part in range(max(counts, default=-1) + 1):
        offsets.append(offsets[-1] + counts.get(part, 0))
    before = F.element_at(F.array(*(F.lit(o) for o in offsets)), F.col(_PART) + 1)
    place = F.col(_ID) - F.shiftleft(F.col(_PART).cast("long"), 33)
    return tagged.withColumn(POSITION, before + place).drop(_PART, _ID)


def first_seen(events: DataFrame, id_col: str, ts_col: str) -> DataFrame:
    """Earliest event time per id."""
    return events.groupBy(id_col).agg(F.min(ts_col).alias(FIRST_SEEN))
