"""Item-kNN: item-item cosine similarity on co-occurrence, computed in Spark, top-N kept.

sim(i, j) = |U_i ∩ U_j| / sqrt(|U_i| |U_j|) * n / (n + shrink), n = |U_i ∩ U_j|
(Sarwar et al., "Item-based collaborative filtering recommendation algorithms", WWW 2001).
A user's score for item j is the sum of sim(i, j) over the items i in the user's history.

Similarities are rounded to multiples of 2^-30 (:data:`SIM_STEP`): any sum of fewer than 2^23 of
them is then exact in float64, whatever the order, so Spark's shuffled sums and numpy's sparse
products give bit-identical scores and the same lists, ties included.

Fitted in Spark, the neighbour lists stay there (the ``itemknn_neighbours`` lake table, written
by the train stage): on the executors each user's best candidates are summed by a join of the
user's distinct items with the lists (:func:`top_candidates`) and travel as a column; single
process use reads the table back into a sparse matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from scipy import sparse

from recpipe.baselines.base import Baseline, SparkTable, SplitFacts, base_meta
from recpipe.config import ItemKnnConfig
from recpipe.layout import ITEMKNN_NEIGHBOURS
from recpipe.schema import CANDIDATE_ITEMS, CANDIDATE_SCORES, ITEM_IDX, TS, USER_IDX
from recpipe.tables import TrainData

SIM_STEP = 2.0**-30


def recent_pairs(train: DataFrame, max_user_items: int | None) -> DataFrame:
    """Distinct (user_idx, item_idx) of ``train`` (with ``ts``), each user's
    ``max_user_items`` most recently touched items only (ties: smaller item index)."""
    pairs = train.groupBy(USER_IDX, ITEM_IDX).agg(F.max(TS).alias("_last"))
    if max_user_items is not None:
        latest = Window.partitionBy(USER_IDX).orderBy(F.col("_last").desc(), ITEM_IDX)
        pairs = pairs.withColumn("_n", F.row_number().over(latest))
        pairs = pairs.where(F.col("_n") <= max_user_items)
    return pairs.select(USER_IDX, ITEM_IDX)


def quantized(sim: Column) -> Column:
    """``sim`` rounded to a multiple of :data:`SIM_STEP` (scaling by a power of two is exact)."""
    return F.floor(sim / F.lit(SIM_STEP) + F.lit(0.5)) * F.lit(SIM_STEP)


def top_candidates(
    users: DataFrame, neighbours: DataFrame, k: int, exclude_seen: bool
) -> DataFrame:
    """``users`` (``user_idx``, ``items`` array) with each user's ``k`` best-scored items as
    ``candidate_items`` / ``candidate_scores`` (best first; ties by smaller item index; null
    when no neighbour of the user's items scores), computed on the executors.

    Score of item j = sum of sim(i, j) over the user's distinct items i; with
    ``exclude_seen`` the user's own items are no candidates. Items outside the candidates
    score 0 at most as far as the top ``k`` is concerned: whatever they score, they rank
    after the k-th candidate.
    """
    from recpipe.scoring.inputs import HISTORY_ITEMS

    owned = users.select(USER_IDX, F.explode(F.array_distinct(HISTORY_ITEMS)).alias("item_i"))
    scored = (
        owned.join(neighbours.select("item_i", "item_j", "sim"), "item_i")
        .groupBy(USER_IDX, "item_j")
        .agg(F.sum("sim").alias("score"))
    )
    if exclude_seen:
        seen = owned.select(USER_IDX, F.col("item_i").alias("item_j"))
        scored = scored.join(seen, [USER_IDX, "item_j"], "left_anti")
    best = Window.partitionBy(USER_IDX).orderBy(F.col("score").desc(), F.col("item_j"))
    ranked = scored.withColumn("_rank", F.row_number().over(best)).where(F.col("_rank") <= k)
    entry = F.struct(F.col("_rank"), F.col("item_j").alias("item"), F.col("score"))
    lists = ranked.groupBy(USER_IDX).agg(F.array_sort(F.collect_list(entry)).alias("_best"))
    lists = lists.select(
        USER_IDX,
        F.transform("_best", lambda e: e["item"]).alias(CANDIDATE_ITEMS),
        F.transform("_best", lambda e: e["score"]).alias(CANDIDATE_SCORES),
    )
    return users.join(lists, USER_IDX, "left")


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
            quantized(
                F.col("co")
                / F.sqrt(F.col("n_i") * F.col("n_j"))
                * F.col("co")
                / (F.col("co") + F.lit(shrink))
            ).alias("sim"),
        )
        .where(F.col("sim") > 0)
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
        meta = {**base_meta(facts, settings), "neighbours": ITEMKNN_NEIGHBOURS}
        fitted = cls({"known_items": facts.known_items}, meta)
        fitted.spark_tables[ITEMKNN_NEIGHBOURS] = SparkTable(similar, ("item_i", "item_j"))
        return fitted

    def attach_neighbours(self, item_i: np.ndarray, item_j: np.ndarray, sim: np.ndarray) -> None:
        """Hold the neighbour lists in memory (single-process scoring/evaluation)."""
        self.arrays.update(
            item_i=np.asarray(item_i, dtype=np.int64),
            item_j=np.asarray(item_j, dtype=np.int64),
            sim=np.asarray(sim, dtype=np.float64),
        )

    def top_candidates(
        self, histories_matrix: sparse.csr_matrix, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items [U, k], scores [U, k]) as :func:`top_candidates` computes them in Spark, from
        binary histories [U, n_items + 1] and the neighbours held in memory (item 0 / 0.0
        pad)."""
        scores = (histories_matrix @ self._similarity()).toarray()
        if exclude_seen:
            scores[histories_matrix.nonzero()] = 0.0
        items = np.zeros((scores.shape[0], k), dtype=np.int64)
        best = np.zeros((scores.shape[0], k), dtype=np.float64)
        for row in range(scores.shape[0]):
            positive = np.flatnonzero(scores[row] > 0)
            order = positive[np.lexsort((positive, -scores[row, positive]))][:k]
            items[row, : len(order)] = order
            best[row, : len(order)] = scores[row, order]
        return items, best

    def scores_of_candidates(self, items: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Raw score rows [U, n_items + 1]: the candidates' scores, 0 elsewhere (ranks the same
        top ``k`` as the full rows; item 0 pads)."""
        rows = np.zeros((items.shape[0], self.n_items + 1), dtype=np.float64)
        users, slots = np.nonzero(items > 0)
        rows[users, items[users, slots]] = scores[users, slots]
        return rows

    def similarity(self) -> sparse.csr_matrix:
        """(n_items + 1) x (n_items + 1) sparse similarity, row i = neighbours of i."""
        size = self.n_items + 1
        a = self.arrays
        return sparse.csr_matrix((a["sim"], (a["item_i"], a["item_j"])), shape=(size, size))

    def _similarity(self) -> sparse.csr_matrix:
        if "sim" not in self.arrays:
            raise RuntimeError(
                "itemknn: the neighbours are in the itemknn_neighbours table, not in memory: "
                "join the candidates as a column or attach them with attach_neighbours"
            )
        if not hasattr(self, "_sim"):
            self._sim = self.similarity()
        return self._sim

    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        return (self.require_history()[users] @ self._similarity()).toarray()
