"""Stable dense integer indexes for ids: existing ids keep theirs, new ids get the next ones."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recpipe.spark import one_row

FIRST_SEEN = "first_seen"
FIRST_SEEN_DS = "first_seen_ds"
# Index 0 is reserved for padding in sequence models; real ids start at 1.
FIRST_INDEX = 1


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
    # A global ordering is needed for dense numbering; new ids per day are few, so one
    # partition is acceptable here.
    order = Window.orderBy(F.col(FIRST_SEEN), F.col(id_col))
    numbered = new.select(
        id_col,
        (F.row_number().over(order) + (start - 1)).cast("int").alias(idx_col),
        F.lit(ds).alias(FIRST_SEEN_DS),
    )
    if existing is None:
        return numbered
    return existing.select(id_col, idx_col, FIRST_SEEN_DS).unionByName(numbered)


def first_seen(events: DataFrame, id_col: str, ts_col: str) -> DataFrame:
    """Earliest event time per id."""
    return events.groupBy(id_col).agg(F.min(ts_col).alias(FIRST_SEEN))
