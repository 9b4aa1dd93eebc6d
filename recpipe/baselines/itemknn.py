"""Item-kNN: item-item cosine similarity on co-occurrence, computed in Spark, top-N kept.

sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|) * n / (n + shrink), n = |U_i ∩ U_j|
(Sarwar et al., "Item-based collaborative filtering recommendation algorithms", WWW 2001).
A user's score for item j is the sum of sim(i, j) over the items i in the user's history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy import sparse

from recpipe.baselines.base import Baseline, SplitFacts, base_meta
from recpipe.config import ItemKnnConfig
from recpipe.schema import ITEM_IDX, TS, USER_IDX
from recpipe.tables import TrainData


def recent_pairs(train: DataFrame, max_user_items: int | None) -> DataFrame:
    """Distinct (user_idx, item_idx) of ``train`` (with ``ts``), each user's
    ``max_user_items`` most recently touched items only (ties: smaller item index)."""
    pairs = train.groupBy(USER_IDX, ITEM_IDX).agg(F.max(TS).alias("_last"))
    if max_user_items is not None:
        latest = Window.partitionBy(USER_IDX).orderBy(F.col("_last").desc(), ITEM_IDX)
        pairs = pairs.withColumn("_n", F.row_number().over(latest))
        pairs = pairs.where(F.col("_n") <= max_user_items)
    return pairs.select(USER_IDX, ITEM_IDX)


def item_similarities(
    train: DataFrame, neighbours: int, shrink: float, max_user_items: int | None = None
) -> DataFrame:
    """(item_i, item_j, sim) for each item's top ``neighbours`` most similar other items.

    Co-occurrence and degrees count each user's ``max_user_items`` most recent items only,
    which bounds the self-join at sum over users of min(d_u, max_user_items)^2 pairs.
    """
    pairs = recent_pairs(train, max_user_items)
    degree = pairs.groupBy(ITEM_IDX).agg(F.count(F.lit(1)).alias("n"))
    left = pairs.withColumnRenamed(ITEM_IDX, "item_i")
    right = pairs.withColumnRenamed(ITEM_IDX, "item_j")
    co = (
        left.join(right, USER_IDX)
        .where(F.col("item_i") != F.col("item_j"))
        .groupBy("item_i", "item_j")
        .agg(F.count(F.lit(1)).alias("co"))
    )
    di = degree.select(F.col(ITEM_IDX).alias("item_i"), F.col("n").alias("n_i"))
    dj = degree.select(F.col(ITEM_IDX).alias("item_j"), F.col("n").alias("n_j"))
    sim = (
        co.join(F.broadcast(di), "item_i")
        .join(F.broadcast(dj), "item_j")
        .select(
            "item_i",
            "item_j",
            (
                F.col("co")
                / F.sqrt(F.col("n_i") * F.col("n_j"))
                * F.col("co")
                / (F.col("co") + F.lit(shrink))
            ).alias("sim"),
        )
    )
    best = Window.partitionBy("item_i").orderBy(F.col("sim").desc(), F.col("item_j"))
    return (
        sim.withColumn("_rank", F.row_number().over(best))
        .where(F.col("_rank") <= neighbours)
        .drop("_rank")
    )


class ItemKnn(Baseline):
    """Scores = binary user history x sparse top-N similarity matrix."""

    name = "itemknn"
    fits_in_spark = True

    @classmethod
    def fit(cls, data: TrainData | SplitFacts, settings: ItemKnnConfig, **context: Any) -> ItemKnn:
        facts = SplitFacts.of(data)
        train: DataFrame = context["train_df"]
        similar = item_similarities(
            train, settings.neighbours, settings.shrink, settings.max_user_items
        )
        table = similar.toArrow()
        arrays = {
            "item_i": table.column("item_i").to_numpy().astype(np.int64),
            "item_j": table.column("item_j").to_numpy().astype(np.int64),
            "sim": table.column("sim").to_numpy().astype(np.float64),
            "known_items": facts.known_items,
        }
        return cls(arrays, base_meta(facts, settings))

    def similarity(self) -> sparse.csr_matrix:
        """(n_items + 1) x (n_items + 1) sparse similarity, row i = neighbours of i."""
        size = self.n_items + 1
        a = self.arrays
        return sparse.csr_matrix((a["sim"], (a["item_i"], a["item_j"])), shape=(size, size))

    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        if not hasattr(self, "_sim"):
            self._sim = self.similarity()
        return (self.require_history()[users] @ self._sim).toarray()
