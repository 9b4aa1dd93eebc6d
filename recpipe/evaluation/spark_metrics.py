"""The ranking metrics of :mod:`recpipe.evaluation.metrics`, computed with Spark DataFrames.

Same definitions as the numpy version. Per-(user, K) sums come from one join, one window and
grouped aggregates over a long (user, K) layout, which keeps the generated code small however
many cut-offs are asked for; only one row per K reaches the driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recpipe.evaluation.metrics import METRICS, USERS_KEY, MetricValues, check_ks, discounts
from recpipe.evaluation.metrics import ideal_dcg as ideal_dcg_table
from recpipe.evaluation.ranking import PAD_ITEM
from recpipe.schema import ITEM_IDX, USER_IDX
from recpipe.spark import one_row

RANK = "rank"
K = "k"


def spark_ranking_metrics(
    recs: DataFrame, truth: DataFrame, ks: Sequence[int], n_items: int
) -> MetricValues:
    """Mean ``(metric, k)`` over truth users, ``("coverage", k)``, and ``USERS_KEY``.

    ``recs`` holds ``user_idx, item_idx, rank`` (1-based, one item per rank, no repeated
    items per user); ``truth`` holds ``user_idx, item_idx``. Every user with a truth item is
    evaluated, with zero hits when absent from ``recs``. Coverage counts distinct items in
    the top K of every user in ``recs``, over ``n_items``. Item 0 (padding) is ignored.
    With no truth users every ranking metric is NaN.
    """
    ks = check_ks(ks)
    top = recs.select(USER_IDX, ITEM_IDX, RANK).where(
        (F.col(RANK) <= ks[-1]) & (F.col(ITEM_IDX) != PAD_ITEM)
    )
    truth = truth.select(USER_IDX, ITEM_IDX).distinct()
    per_k = (
        _per_user_metrics(top, truth, ks)
        .groupBy(K)
        .agg(F.count(F.lit(1)).alias("users"), *(F.avg(name).alias(name) for name in METRICS))
    )
    rows = {row[K]: row for row in per_k.collect()}
    values: MetricValues = {
        (name, k): _as_float(rows[k][name] if k in rows else None) for k in ks for name in METRICS
    }
    values[USERS_KEY] = float(rows[ks[0]]["users"]) if rows else 0.0
    values.update(_coverage(top, ks, n_items))
    return values


def _per_user_metrics(top: DataFrame, truth: DataFrame, ks: list[int]) -> DataFrame:
    """One row per (truth user, K) with a column per metric in ``METRICS``."""
    sums = _hit_sums(top, truth, ks)
    n_hits, n_truth, first = F.col("hits"), F.col("n_truth"), F.col("first_hit")
    ideal = F.least(n_truth, F.col(K)).cast("int")
    per_metric = {
        "hr": F.when(n_hits > 0, 1.0).otherwise(0.0),
        "precision": n_hits / F.col(K),
        "recall": n_hits / n_truth,
        "ndcg": F.col("dcg") / F.element_at(_lookup(ideal_dcg_table(ks[-1])), ideal),
        "map": F.col("ap") / ideal,
        # first_hit is null when nothing was hit within K.
        "mrr": F.coalesce(1.0 / first, F.lit(0.0)),
    }
    return sums.select(USER_IDX, K, *(per_metric[name].alias(name) for name in METRICS))


def _hit_sums(top: DataFrame, truth: DataFrame, ks: list[int]) -> DataFrame:
    """Per (truth user, K): truth size, hits, DCG, summed precision-at-hit, first hit rank."""
    # Left join from truth: missed truth items keep a null rank, so users without any hit
    # (or without recs) still get their rows and truth size.
    matched = truth.join(top, [USER_IDX, ITEM_IDX], "left")
    by_rank = Window.partitionBy(USER_IDX).orderBy(F.col(RANK).asc_nulls_last(), ITEM_IDX)
    # Hits sort first, so a hit's row number is the number of hits up to its rank.
    matched = matched.withColumn("precision_at", F.row_number().over(by_rank) / F.col(RANK))
    discount = F.element_at(_lookup(discounts(ks[-1])), F.col(RANK).cast("int"))
    within = F.col(RANK) <= F.col(K)
    exploded = matched.withColumn(K, F.explode(F.array(*(F.lit(k) for k in ks))))
    return exploded.groupBy(USER_IDX, K).agg(
        F.count(F.lit(1)).alias("n_truth"),
        F.count(F.when(within, True)).alias("hits"),
        F.sum(F.when(within, discount).otherwise(0.0)).alias("dcg"),
        F.sum(F.when(within, F.col("precision_at")).otherwise(0.0)).alias("ap"),
        F.min(F.when(within, F.col(RANK))).alias("first_hit"),
    )


def _coverage(top: DataFrame, ks: list[int], n_items: int) -> MetricValues:
    """``("coverage", k)``: distinct items in any user's top K, over ``n_items``."""
    best = top.groupBy(ITEM_IDX).agg(F.min(RANK).alias("best_rank"))
    counts = one_row(
        best.agg(*(F.count(F.when(F.col("best_rank") <= k, True)).alias(str(k)) for k in ks)),
        "coverage",
    )
    return {("coverage", k): counts[str(k)] / n_items for k in ks}


def _lookup(table: Iterable[float]) -> Column:
    """A literal array column; ``element_at`` reads it 1-based, so entry r sits at rank r."""
    return F.array(*(F.lit(float(value)) for value in table))


def _as_float(value: float | None) -> float:
    return float("nan") if value is None else float(value)
