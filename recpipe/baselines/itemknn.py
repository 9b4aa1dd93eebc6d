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

from recpipe.baselines.base import Baseline, base_meta, known_items_mask
from recpipe.config import ItemKnnConfig
from recpipe.schema import ITEM_IDX, USER_IDX
from recpipe.tables import TrainData


def item_similarities(train: DataFrame, neighbours: int, shrink: float) -> DataFrame:
    """(item_i, item_j, sim) for each item's top ``neighbours`` most similar other items."""
    pairs = train.select(USER_IDX, ITEM_IDX).distinct()
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

    @classmethod
    def fit(cls, data: TrainData, settings: ItemKnnConfig, **context: Any) -> ItemKnn:
        train: DataFrame = context["train_df"]
        table = item_similarities(train, settings.neighbours, settings.shrink).toArrow()
        arrays = {
            "item_i": table.column("item_i").to_numpy().astype(np.int64),
            "item_j": table.column("item_j").to_numpy().astype(np.int64),
            "sim": table.column("sim").to_numpy().astype(np.float64),
            "known_items": known_items_mask(data),
        }
        return cls(arrays, base_meta(data, settings))

    def similarity(self) -> sparse.csr_matrix:
        """(n_items + 1) x (n_items + 1) sparse similarity, row i = neighbours of i."""
        size = self.n_items + 1
        a = self.arrays
        return sparse.csr_matrix((a["sim"], (a["item_i"], a["item_j"])), shape=(size, size))

    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        if not hasattr(self, "_sim"):
            self._sim = self.similarity()
        return (self.require_history()[users] @ self._sim).toarray()
