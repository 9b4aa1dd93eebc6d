"""Most-popular baseline: items ranked by distinct training users (all time or a recent window),
counted by Spark."""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recpipe.baselines.base import Baseline, SplitFacts, base_meta
from recpipe.config import PopularityConfig
from recpipe.schema import ITEM_IDX, TS, USER_IDX
from recpipe.spark import one_row
from recpipe.tables import TrainData

DAY_SECONDS = 86_400


def distinct_users_per_item(train: DataFrame, n_items: int) -> np.ndarray:
    """[n_items + 1] int64: distinct users of each item in ``train``, aggregated by Spark (one
    row per item reaches the driver; items outside 1..n_items are left out)."""
    per_item = (
        train.select(USER_IDX, ITEM_IDX).distinct().groupBy(ITEM_IDX)
        .agg(F.count(F.lit(1)).alias("users")).toArrow()
    )  # fmt: skip
    counts = np.zeros(n_items + 1, dtype=np.int64)
    items = per_item.column(ITEM_IDX).to_numpy(zero_copy_only=False).astype(np.int64)
    inside = (items >= 0) & (items <= n_items)
    counts[items[inside]] = per_item.column("users").to_numpy(zero_copy_only=False)[inside]
    return counts


class Popularity(Baseline):
    """Scores every user with the item's count of distinct users (ties: smaller index first)."""

    name = "popularity"
    needs_history = False
    fits_in_spark = True

    @classmethod
    def fit(
        cls, data: TrainData | SplitFacts, settings: PopularityConfig, **context: Any
    ) -> Popularity:
        facts = SplitFacts.of(data)
        train: DataFrame = context["train_df"]
        second = F.col(TS).cast("long")  # whole seconds, as the recent window counts them
        if settings.recent_days is not None:
            newest = one_row(train.agg(F.max(second).alias("newest")), "popularity window")
            if newest["newest"] is not None:
                start = int(newest["newest"]) - settings.recent_days * DAY_SECONDS
                train = train.where(second > start)
        counts = distinct_users_per_item(train, facts.n_items).astype(np.float64)
        arrays = {"counts": counts, "known_items": facts.known_items}
        return cls(arrays, base_meta(facts, settings))

    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.arrays["counts"], (len(users), self.n_items + 1)).copy()
