"""Quality by user-activity quartile: cuts, group membership and group means, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recpipe.evaluation.activity import activity_groups
from recpipe.evaluation.metrics import per_user_ranking_metrics
from recpipe.evaluation.ranking import csr_from_pairs
from recpipe.evaluation.spark_metrics import spark_ranking_metrics


def test_quartiles_split_eight_users_two_by_two() -> None:
    activity = np.array([8, 1, 7, 2, 6, 3, 5, 4])
    ndcg = np.array([0.8, 0.1, 0.7, 0.2, 0.6, 0.3, 0.5, 0.4])
    groups = activity_groups(activity, {("ndcg", 10): ndcg})
    # Linear percentiles of 1..8: 1 + 7q.
    assert groups.cuts == pytest.approx((2.75, 4.5, 6.25))
    assert [(g.users, g.activity_low, g.activity_high) for g in groups.groups] == [
        (2, 1, 2), (2, 3, 4), (2, 5, 6), (2, 7, 8),
    ]  # fmt: skip
    means = [g.values[("ndcg", 10)] for g in groups.groups]
    assert means == pytest.approx([0.15, 0.35, 0.55, 0.75])
    assert groups.label(0) == "Q1 (1-2 items, 2 users)"
    record = groups.to_dict()
    assert record["groups"][3] == {
        "group": 4, "users": 2, "activity": [7, 8], "metrics": {"ndcg@10": pytest.approx(0.75)},
    }  # fmt: skip


def test_ties_at_a_cut_stay_in_the_lower_group() -> None:
    activity = np.array([5, 5, 5, 5, 9])
    groups = activity_groups(activity, {("hr", 1): np.array([1.0, 0.0, 0.0, 1.0, 1.0])})
    assert groups.cuts == (5.0, 5.0, 5.0)
    assert [g.users for g in groups.groups] == [4, 0, 0, 1]
    assert groups.groups[0].values[("hr", 1)] == 0.5
    assert math.isnan(groups.groups[1].values[("hr", 1)])
    assert groups.groups[1].activity_low is None
    assert groups.label(1) == "Q2 (no users)"


def test_spark_groups_match_numpy(spark: SparkSession) -> None:
    rng = np.random.default_rng(7)
    n_users, n_items, ks = 120, 40, [1, 5, 10]
    users = np.arange(1, n_users + 1)
    catalogue = np.arange(1, n_items + 1)
    truth_pairs = [
        (int(u), int(i)) for u in users for i in rng.choice(catalogue, rng.integers(0, 4), False)
    ]
    recommended = np.array(
        [rng.choice(np.arange(1, n_items + 1), size=10, replace=False) for _ in users]
    )
    activity = rng.integers(1, 30, size=n_users + 1)  # by user index; user 0 unused
    truth = csr_from_pairs(
        np.array([u for u, _ in truth_pairs]), np.array([i for _, i in truth_pairs]), n_users + 1
    )
    evaluated, per_user = per_user_ranking_metrics(recommended, truth, users, ks)

    recs = spark.createDataFrame(
        [(int(u), int(item), rank + 1) for row, u in enumerate(users)
         for rank, item in enumerate(recommended[row])],
        "user_idx int, item_idx int, rank int",
    )  # fmt: skip
    truth_df = spark.createDataFrame(truth_pairs, "user_idx int, item_idx int")
    # Some evaluated users have no activity row: they count as 0 in both.
    activity[evaluated[::9]] = 0
    expected = activity_groups(activity[evaluated], per_user)
    activity_df = spark.createDataFrame(
        [(int(u), int(activity[u])) for u in users if activity[u] > 0],
        "user_idx int, activity long",
    )
    _, _, got, _ = spark_ranking_metrics(recs, truth_df, ks, n_items, activity=activity_df)
    assert got is not None
    assert got.cuts == pytest.approx(expected.cuts, rel=1e-12)
    assert sum(g.users for g in expected.groups) == evaluated.size > 60
    for mine, theirs in zip(got.groups, expected.groups, strict=True):
        assert (mine.users, mine.activity_low, mine.activity_high) == (
            theirs.users, theirs.activity_low, theirs.activity_high,
        )  # fmt: skip
        for key, value in theirs.values.items():
            assert mine.values[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
