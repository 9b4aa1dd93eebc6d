"""The ranking metrics of :mod:`recpipe.evaluation.metrics`, computed with Spark DataFrames.

Same definitions as the numpy version. Per-(user, K) sums come from one join, one window and
grouped aggregates over a long (user, K) layout, which keeps the generated code small however
many cut-offs are asked for; only one row per K reaches the driver, and for the bootstrap one
row per (metric, K, resample).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recpipe.evaluation.activity import N_GROUPS, QUANTILES, ActivityGroup, ActivityGroups
from recpipe.evaluation.bootstrap import ResampleSums
from recpipe.evaluation.metrics import METRICS, USERS_KEY, MetricValues, check_ks, discounts
from recpipe.evaluation.metrics import ideal_dcg as ideal_dcg_table
from recpipe.evaluation.ranking import PAD_ITEM
from recpipe.evaluation.segments import NO_PROFILE, Segment, Segments
from recpipe.schema import ITEM_IDX, USER_IDX
from recpipe.spark import one_row, persist_on_disk

RANK = "rank"
K = "k"
ACTIVITY = "activity"
GROUP = "group"


def spark_ranking_metrics(
    recs: DataFrame,
    truth: DataFrame,
    ks: Sequence[int],
    n_items: int,
    bootstrap: tuple[int, int] = (0, 0),
    activity: DataFrame | None = None,
    profiles: tuple[DataFrame, Sequence[str]] | None = None,
) -> tuple[
    MetricValues, dict[tuple[str, int], np.ndarray], ActivityGroups | None, list[Segments] | None
]:
    """Mean ``(metric, k)`` over truth users, ``("coverage", k)``, and ``USERS_KEY``; with
    ``bootstrap = (resamples, seed)``, resamples > 0, also each ranking metric's resample
    means (:mod:`recpipe.evaluation.bootstrap`, summed on the executors); with ``activity``
    (``user_idx, activity``: known-history length) the metrics per activity quartile
    (:mod:`recpipe.evaluation.activity`; users without a row count as 0); with ``profiles``
    (``user_idx, attribute, label`` rows and the attributes) the metrics per profile group
    (:mod:`recpipe.evaluation.segments`; a user without a row for an attribute is
    ``(no profile)``). All of them average the same per-user rows, computed once.

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
    per_user = persist_on_disk(_per_user_metrics(top, truth, ks))
    try:
        per_k = per_user.groupBy(K).agg(
            F.count(F.lit(1)).alias("users"), *(F.avg(name).alias(name) for name in METRICS)
        )
        rows = {row[K]: row for row in per_k.collect()}
        resamples, seed = bootstrap
        means = _resample_means(per_user, ks, resamples, seed) if resamples > 0 else {}
        groups = None if activity is None else _activity_groups(per_user, activity, ks)
        segments = None if profiles is None else _profile_groups(per_user, *profiles)
    finally:
        per_user.unpersist()
    values: MetricValues = {
        (name, k): _as_float(rows[k][name] if k in rows else None) for k in ks for name in METRICS
    }
    values[USERS_KEY] = float(rows[ks[0]]["users"]) if rows else 0.0
    values.update(_coverage(top, ks, n_items))
    return values, means, groups, segments


def _profile_groups(
    per_user: DataFrame, segments: DataFrame, attributes: Sequence[str]
) -> list[Segments]:
    """The per-user metrics averaged per profile group; one row per (attribute, label, K)
    reaches the driver."""
    names = F.explode(F.array(*(F.lit(a) for a in attributes))).alias("attribute")
    joined = (
        per_user.select("*", names)
        .join(segments, [USER_IDX, "attribute"], "left")
        .withColumn("label", F.coalesce(F.col("label"), F.lit(NO_PROFILE)))
    )
    rows = (
        joined.groupBy("attribute", "label", K)
        .agg(F.count(F.lit(1)).alias("users"), *(F.avg(name).alias(name) for name in METRICS))
        .collect()
    )
    by_group: dict[str, dict[str, list[Any]]] = {a: {} for a in attributes}
    for row in rows:
        by_group[row["attribute"]].setdefault(row["label"], []).append(row)
    built = []
    for attribute in attributes:
        groups = {}
        for label, group_rows in by_group[attribute].items():
            values = {
                (name, row[K]): _as_float(row[name]) for row in group_rows for name in METRICS
            }
            groups[label] = Segment(int(group_rows[0]["users"]), values)
        built.append(Segments(attribute, groups))
    return built


def _activity_groups(per_user: DataFrame, activity: DataFrame, ks: list[int]) -> ActivityGroups:
    """The per-user metrics averaged per activity quartile: cuts from Spark's exact
    ``percentile`` over the evaluated users, one row per (group, K) back to the driver."""
    joined = per_user.join(activity.select(USER_IDX, ACTIVITY), USER_IDX, "left").withColumn(
        ACTIVITY, F.coalesce(F.col(ACTIVITY), F.lit(0))
    )
    found = one_row(
        joined.where(F.col(K) == ks[0]).agg(F.percentile(ACTIVITY, list(QUANTILES)).alias("cuts")),
        "activity quartiles",
    )["cuts"]
    cuts = [float("nan")] * len(QUANTILES) if found is None else [float(c) for c in found]
    group = sum(((F.col(ACTIVITY) > F.lit(cut)).cast("int") for cut in cuts), F.lit(0))
    rows = (
        joined.withColumn(GROUP, group)
        .groupBy(GROUP, K)
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.min(ACTIVITY).alias("low"),
            F.max(ACTIVITY).alias("high"),
            *(F.avg(name).alias(name) for name in METRICS),
        )
        .collect()
    )
    by_group = {(row[GROUP], row[K]): row for row in rows}
    built = []
    for number in range(N_GROUPS):
        first = by_group.get((number, ks[0]))
        values = {
            (name, k): _as_float(by_group[(number, k)][name] if (number, k) in by_group else None)
            for k in ks
            for name in METRICS
        }
        built.append(
            ActivityGroup(
                int(first["users"]) if first else 0,
                int(first["low"]) if first else None,
                int(first["high"]) if first else None,
                values,
            )
        )
    return ActivityGroups(tuple(cuts), tuple(built))


class _ResampleSummer:
    """``mapInArrow`` function: a partition's per-(user, K) metric rows -> its resample sums,
    one row per (column, resample); column j = K index * len(METRICS) + metric index."""

    def __init__(self, ks: list[int], resamples: int, seed: int) -> None:
        self.ks, self.resamples, self.seed = ks, resamples, seed

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        n_columns = len(self.ks) * len(METRICS)
        sums = ResampleSums(n_columns, self.resamples, self.seed)
        ks = np.asarray(self.ks)
        by_k = np.argsort(ks)
        for batch in batches:
            # One wide row per user, so that its weights are drawn once, not once per K:
            # drawing them is most of this function's time.
            users, row_user = np.unique(
                batch.column(USER_IDX).to_numpy(zero_copy_only=False), return_inverse=True
            )
            at_k = batch.column(K).to_numpy(zero_copy_only=False)
            k_index = by_k[np.searchsorted(ks[by_k], at_k)]
            at = (k_index * len(METRICS))[:, None] + np.arange(len(METRICS))
            wide = np.zeros((len(users), n_columns))
            counted = np.zeros_like(wide)
            metrics = [batch.column(name).to_numpy(zero_copy_only=False) for name in METRICS]
            wide[row_user[:, None], at] = np.column_stack(metrics)
            counted[row_user[:, None], at] = 1.0
            sums.add(users, wide, range(n_columns), counted)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(np.tile(np.arange(n_columns, dtype=np.int32), self.resamples)),
                pa.array(np.repeat(np.arange(self.resamples, dtype=np.int32), n_columns)),
                pa.array(sums.weights.ravel()),
                pa.array(sums.sums.ravel()),
            ],
            names=["column", "resample", "weight", "total"],
        )


def _resample_means(
    per_user: DataFrame, ks: list[int], resamples: int, seed: int
) -> dict[tuple[str, int], np.ndarray]:
    """Each ranking metric's resample means: executors sum their users' weighted values, one
    row per (column, resample) reaches the driver."""
    summer = _ResampleSummer(ks, resamples, seed)
    ddl = "column int, resample int, weight double, total double"
    partial = per_user.select(USER_IDX, K, *METRICS).mapInArrow(summer, ddl)
    summed = partial.groupBy("column", "resample").agg(
        F.sum("weight").alias("weight"), F.sum("total").alias("total")
    )
    table = summed.toArrow()
    # The executors' sums, put back into one ResampleSums, give its means.
    sums = ResampleSums(len(ks) * len(METRICS), resamples, seed)
    at = (
        table.column("resample").to_numpy(zero_copy_only=False),
        table.column("column").to_numpy(zero_copy_only=False),
    )
    sums.weights[at] = table.column("weight").to_numpy(zero_copy_only=False)
    sums.sums[at] = table.column("total").to_numpy(zero_copy_only=False)
    means = sums.means()
    # Column order of _ResampleSummer: K-major, METRICS within each K.
    keys = [(name, k) for k in ks for name in METRICS]
    return {key: means[:, j] for j, key in enumerate(keys)}


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
