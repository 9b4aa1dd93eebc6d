"""What scoring reads: each user's history from ``sessions`` and the recent popularity list.

A user's history is the user's distinct items ordered by first interaction (time, then item
index), everything in the ``sessions`` partition of the scored ``ds``. The same history is the
seen-items set excluded from the user's list and, for sequence models, the input sequence.
Both a Spark and a pyarrow (single-process) reader are here; they must agree.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.commit import current_version
from recpipe.etl.sessionize import TS_MS, explode_sessions
from recpipe.lake import Lake
from recpipe.layout import SESSIONS
from recpipe.parquet_files import verified_dataset
from recpipe.schema import DS, ITEM_IDX, TRAINED, USER_IDX
from recpipe.scoring.histories import UserHistories
from recpipe.spark import one_row
from recpipe.storage import LocationLike

HISTORY_ITEMS = "items"
DAY_MS = 86_400_000


def history_frame(spark: SparkSession, root: LocationLike, ds: str) -> DataFrame:
    """``(user_idx int, items array<int>)``: every user of ``sessions`` ds with their history."""
    sessions = Lake(root).read(spark, SESSIONS, [{DS: ds}])
    first = explode_sessions(sessions).groupBy(USER_IDX, ITEM_IDX).agg(F.min(TS_MS).alias(TS_MS))
    ordered = F.array_sort(F.collect_list(F.struct(TS_MS, ITEM_IDX)))
    return first.groupBy(USER_IDX).agg(
        F.transform(ordered, lambda entry: entry[ITEM_IDX]).alias(HISTORY_ITEMS)
    )


def with_trained_flag(users: DataFrame, train: DataFrame) -> DataFrame:
    """``users`` with a boolean ``trained`` column: whether the user has a row in ``train``
    (what id-based models need to score a user), joined in Spark."""
    trained = train.select(USER_IDX).distinct().withColumn(TRAINED, F.lit(True))
    joined = users.join(trained, USER_IDX, "left")
    return joined.withColumn(TRAINED, F.coalesce(F.col(TRAINED), F.lit(False)))


def known_items(train: DataFrame, n_items: int) -> np.ndarray:
    """Bool [n_items + 1]: items with a row in ``train`` (one row per item reaches the driver;
    padding and indexes outside 1..n_items excluded)."""
    items = train.select(ITEM_IDX).distinct().toArrow().column(0)
    values = items.to_numpy(zero_copy_only=False).astype(np.int64)
    known = np.zeros(n_items + 1, dtype=bool)
    known[values[(values >= 1) & (values <= n_items)]] = True
    return known


def _session_events(root: LocationLike, ds: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder = current_version(root, SESSIONS, {DS: ds})
    table = verified_dataset(folder).to_table(columns=[USER_IDX, ITEM_IDX, TS_MS])
    lengths = pc.list_value_length(table.column(ITEM_IDX)).to_numpy(zero_copy_only=False)
    users = np.repeat(table.column(USER_IDX).to_numpy(), lengths).astype(np.int64)
    items = pc.list_flatten(table.column(ITEM_IDX)).to_numpy().astype(np.int64)
    ts = pc.list_flatten(table.column(TS_MS)).to_numpy().astype(np.int64)
    return users, items, ts


def read_histories(root: LocationLike, ds: str) -> UserHistories:
    """The histories of :func:`history_frame`, read in this process with pyarrow."""
    return UserHistories.from_events(*_session_events(root, ds), distinct=True)


@dataclass(frozen=True)
class PopularList:
    """Items ranked by distinct users in the recent window, most popular first."""

    items: np.ndarray
    counts: np.ndarray
    window_start_ms: int
    window_end_ms: int
    days: int

    def describe(self) -> dict[str, object]:
        """Manifest record of the window."""

        def iso(ms: int) -> str:
            return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")

        return {
            "days": self.days,
            "start": iso(self.window_start_ms),
            "end": iso(self.window_end_ms),
            "items": len(self.items),
            "rule": "items ranked by distinct users in the window ending at the newest event "
            "up to the end of ds; each user's seen items skipped",
        }


def popular_list(spark: SparkSession, root: LocationLike, ds: str, days: int) -> PopularList:
    """The recent-window popularity list for ``ds``, aggregated by Spark.

    The window ends at the newest event before the end of ``ds`` (the data decides, never the
    wall clock, so a historical dataset still has a window) and spans ``days`` days.
    """
    events = explode_sessions(Lake(root).read(spark, SESSIONS, [{DS: ds}]))
    day_end = int(dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC).timestamp() * 1000)
    day_end += DAY_MS
    bounds = one_row(
        events.agg(
            F.max(F.when(F.col(TS_MS) < day_end, F.col(TS_MS))).alias("before"),
            F.max(TS_MS).alias("newest"),
        ),
        f"popular list ds={ds}",
    )
    end = bounds["before"] if bounds["before"] is not None else bounds["newest"]
    if end is None:
        return PopularList(np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0, days)
    start = int(end) - days * DAY_MS
    counts = (
        events.where((F.col(TS_MS) > start) & (F.col(TS_MS) <= int(end)))
        .groupBy(ITEM_IDX)
        .agg(F.countDistinct(USER_IDX).alias("users"))
        .toArrow()
    )
    items = counts.column(ITEM_IDX).to_numpy().astype(np.int64)
    users = counts.column("users").to_numpy().astype(np.int64)
    order = np.lexsort((items, -users))
    return PopularList(items[order], users[order], start, int(end), days)
