"""Evaluation library: hand-computed metrics, exact top-K, beyond-accuracy, Spark parity."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from helpers import brute_force_top_k
from pyspark.sql import SparkSession

from recpipe.evaluation import (
    METRICS,
    USERS_KEY,
    EvaluationResult,
    Protocol,
    beyond_accuracy,
    csr_from_pairs,
    csr_rows,
    item_popularity,
    metrics_table,
    popularity_percentiles,
    ranking_metrics,
    top_k,
)
from recpipe.evaluation.bootstrap import resample_means
from recpipe.evaluation.metrics import per_user_ranking_metrics
from recpipe.evaluation.spark_metrics import spark_ranking_metrics


def log2(x: float) -> float:
    return math.log2(x)


def csr_of(sets: dict[int, set[int]], n_users: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(u, i) for u, items in sets.items() for i in items]
    users = np.array([u for u, _ in pairs], dtype=np.int64)
    items = np.array([i for _, i in pairs], dtype=np.int64)
    return csr_from_pairs(users, items, n_users)


def assert_metrics(got: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


# --------------------------------------------------------------------------- CSR helpers


def test_csr_from_pairs_sorts_and_dedupes() -> None:
    indptr, indices = csr_from_pairs(np.array([2, 0, 2, 2, 0]), np.array([5, 3, 1, 5, 3]), 4)
    assert indptr.tolist() == [0, 1, 1, 3, 3]
    assert indices.tolist() == [3, 1, 5]
    lengths, items = csr_rows((indptr, indices), np.array([2, 1, 0, 9]))  # 9: beyond the CSR
    assert lengths.tolist() == [2, 0, 1, 0]
    assert items.tolist() == [1, 5, 3]


def test_csr_from_pairs_rejects_out_of_range_users() -> None:
    with pytest.raises(ValueError):
        csr_from_pairs(np.array([0, 3]), np.array([1, 1]), 3)


# --------------------------------------------------------------------------- ranking metrics


def test_single_user_example_from_the_definitions() -> None:
    # Truth {3, 7}, list [3, 5, 7, 9], K=3: hits at ranks 1 and 3.
    truth = csr_of({0: {3, 7}}, 1)
    got = ranking_metrics(np.array([[3, 5, 7, 9]]), truth, np.array([0]), [3])
    assert_metrics(
        got,
        {
            ("hr", 3): 1.0,
            ("precision", 3): 2 / 3,
            ("recall", 3): 1.0,
            ("ndcg", 3): (1 + 1 / log2(4)) / (1 + 1 / log2(3)),
            ("map", 3): (1 / 2) * (1 / 1 + 2 / 3),
            ("mrr", 3): 1.0,
        },
    )
    assert got[USERS_KEY] == 1


def test_several_users_skipping_those_without_truth() -> None:
    # user 0: T={3,7},      list [3,5,7,9,2] -> hits at ranks 1, 3
    # user 1: T={}          -> skipped
    # user 2: T={4},        list [1,2,3,5,4] -> hit at rank 5
    # user 3: T={1,2,6,8},  list [9,6,8,0,0] -> hits at ranks 2, 3 (0 = padding)
    # user 7: beyond the truth CSR -> skipped
    # K=10 is longer than the lists: the missing ranks count as misses.
    truth = csr_of({0: {3, 7}, 2: {4}, 3: {1, 2, 6, 8}}, 4)
    users = np.array([3, 1, 0, 7, 2])
    recommended = np.array(
        [
            [9, 6, 8, 0, 0],
            [1, 2, 3, 4, 5],
            [3, 5, 7, 9, 2],
            [1, 2, 3, 4, 5],
            [1, 2, 3, 5, 4],
        ]
    )
    got = ranking_metrics(recommended, truth, users, [1, 3, 10])
    assert got[USERS_KEY] == 3
    # Per user (u0, u2, u3) for each K:
    per_user = {
        # K=1: only u0 hits at rank 1; IDCG@1 = 1, m = 1.
        ("hr", 1): (1, 0, 0),
        ("precision", 1): (1, 0, 0),
        ("recall", 1): (1 / 2, 0, 0),
        ("ndcg", 1): (1, 0, 0),
        ("map", 1): (1, 0, 0),
        ("mrr", 1): (1, 0, 0),
        # K=3: u0 ranks 1,3 (m=2); u2 none; u3 ranks 2,3 (m=min(4,3)=3).
        ("hr", 3): (1, 0, 1),
        ("precision", 3): (2 / 3, 0, 2 / 3),
        ("recall", 3): (1, 0, 2 / 4),
        ("ndcg", 3): (
            (1 + 1 / log2(4)) / (1 + 1 / log2(3)),
            0,
            (1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4)),
        ),
        ("map", 3): ((1 / 2) * (1 + 2 / 3), 0, (1 / 3) * (1 / 2 + 2 / 3)),
        ("mrr", 3): (1, 0, 1 / 2),
        # K=10: u0 as at K=3 with P=2/10; u2 rank 5 (m=1); u3 ranks 2,3 with m=4.
        ("hr", 10): (1, 1, 1),
        ("precision", 10): (2 / 10, 1 / 10, 2 / 10),
        ("recall", 10): (1, 1, 2 / 4),
        ("ndcg", 10): (
            (1 + 1 / log2(4)) / (1 + 1 / log2(3)),
            (1 / log2(6)) / 1,
            (1 / log2(3) + 1 / log2(4)) / (1 + 1 / log2(3) + 1 / log2(4) + 1 / log2(5)),
        ),
        ("map", 10): ((1 / 2) * (1 + 2 / 3), (1 / 1) * (1 / 5), (1 / 4) * (1 / 2 + 2 / 3)),
        ("mrr", 10): (1, 1 / 5, 1 / 2),
    }
    assert_metrics(got, {key: sum(vals) / 3 for key, vals in per_user.items()})


def test_no_evaluated_users_gives_nan() -> None:
    truth = csr_of({}, 2)
    got = ranking_metrics(np.array([[1, 2]]), truth, np.array([0]), [2])
    assert got[USERS_KEY] == 0
    assert all(math.isnan(got[(name, 2)]) for name in METRICS)


def test_padding_item_is_never_a_hit() -> None:
    # Truth oddly holding item 0 must not turn padding into hits: 1 hit (item 2) of |T| = 2.
    truth = (np.array([0, 2]), np.array([0, 2]))
    got = ranking_metrics(np.array([[0, 2]]), truth, np.array([0]), [2])
    assert got[("precision", 2)] == pytest.approx(1 / 2)
    assert got[("mrr", 2)] == pytest.approx(1 / 2)


# --------------------------------------------------------------------------- top_k


def make_scorer(matrix: np.ndarray):
    def score(block: np.ndarray) -> np.ndarray:
        return matrix[block]

    return score


@pytest.mark.parametrize("k", [1, 4, 9, 12])
@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_top_k_matches_brute_force_with_ties_and_batches(
    k: int, backend: str, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "numpy":
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    rng = np.random.default_rng(7)
    n_users, n_items = 30, 10
    # Three score levels: ties everywhere, including across the top-K boundary.
    matrix = rng.integers(0, 3, size=(n_users, n_items + 1)).astype(dtype)
    matrix[:, 0] = 99.0  # padding column scores high and must still never come back
    matrix[rng.random(matrix.shape) < 0.05] = np.nan  # NaN ranks as -inf: never recommended
    matrix[rng.random(matrix.shape) < 0.05] = -np.inf
    seen_sets = {
        u: set(rng.choice(np.arange(1, n_items + 1), size=u % 6, replace=False))
        for u in range(n_users)
    }
    seen_sets[5] = set(range(1, n_items + 1))  # everything seen: all padding
    seen = csr_of(seen_sets, n_users)
    users = rng.permutation(n_users)
    expected_items, expected_scores = brute_force_top_k(matrix[users], users, seen_sets, k)
    for batch in (1, 4, 7, 1000):
        items, scores = top_k(make_scorer(matrix), users, k, n_items, seen, batch=batch)
        assert items.dtype == np.int64
        assert items.shape == scores.shape == (n_users, k)
        assert items.tolist() == expected_items, batch
        assert scores.tolist() == expected_scores, batch
    all_seen_row = items[users.tolist().index(5)]
    assert all_seen_row.tolist() == [0] * k


def test_top_k_equal_scores_rank_smaller_item_first() -> None:
    items, scores = top_k(lambda b: np.ones((b.size, 6)), np.array([0]), 3, 5, None)
    assert items.tolist() == [[1, 2, 3]]
    assert scores.tolist() == [[1.0, 1.0, 1.0]]


def test_top_k_pads_when_too_few_candidates() -> None:
    # Items 1..3. User 0: item 1 is NaN (ranked as -inf), item 2 seen, item 3 -inf, so
    # nothing is left and the row is all padding. User 1: item 3 is -inf -> [2, 1, 0, 0].
    matrix = np.array([[0.0, np.nan, 5.0, -np.inf], [0.0, 1.0, 2.0, -np.inf]])
    seen = csr_of({0: {2}}, 2)
    items, scores = top_k(make_scorer(matrix), np.array([0, 1]), 4, 3, seen)
    assert items.tolist() == [[0, 0, 0, 0], [2, 1, 0, 0]]
    assert scores.tolist() == [[-np.inf] * 4, [2.0, 1.0, -np.inf, -np.inf]]


def test_top_k_accepts_read_only_scores_and_keeps_them_intact() -> None:
    popularity = np.array([0.0, 3.0, 1.0, 3.0, 2.0])
    scorer = lambda b: np.broadcast_to(popularity, (b.size, popularity.size))  # noqa: E731
    seen = csr_of({1: {1}}, 2)
    items, _ = top_k(scorer, np.array([0, 1]), 2, 4, seen)
    assert items.tolist() == [[1, 3], [3, 4]]
    assert popularity.tolist() == [0.0, 3.0, 1.0, 3.0, 2.0]


def test_top_k_rejects_wrong_score_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        top_k(lambda b: np.zeros((b.size, 3)), np.array([0]), 1, 5, None)


# --------------------------------------------------------------------------- beyond accuracy


def test_beyond_accuracy_hand_computed() -> None:
    # Catalogue items 1..5 with popularity [5, 3, 3, 0, 1] over 5 train users.
    # Ascending ranks: item4 (0) -> 1, item5 (1) -> 2, items 2,3 (3) -> 3 and 4, average 3.5,
    # item1 (5) -> 5. Percentile (rank - 1) / 4: item1 1, items 2,3 0.625, item4 0, item5 0.25.
    popularity = np.array([0, 5, 3, 3, 0, 1])
    percentiles = popularity_percentiles(popularity)
    assert percentiles[1:].tolist() == [1.0, 0.625, 0.625, 0.0, 0.25]
    # Top 2 of the lists below: [1,2], [1,4], [3,0] -> entries 1,2,1,4,3 (padding ignored).
    recommended = np.array([[1, 2, 5], [1, 4, 5], [3, 0, 0]])
    got = beyond_accuracy(recommended, 2, popularity, 5)
    assert got["coverage"] == pytest.approx(4 / 5)  # items {1,2,3,4}
    assert got["popularity_percentile"] == pytest.approx((1 + 0.625 + 1 + 0 + 0.625) / 5)
    # -log2(pop / 5): item1 0, items 2,3 log2(5/3), item4 (pop 0 -> 1) log2(5).
    assert got["novelty"] == pytest.approx((0 + log2(5 / 3) + 0 + log2(5) + log2(5 / 3)) / 5)
    # Popularity bias: the mean train popularity of the entries, and the share of entries
    # outside the short head (percentile >= 0.8: item 1 only) -> items 2, 4, 3.
    assert got["arp"] == pytest.approx((5 + 3 + 5 + 0 + 3) / 5)
    assert got["long_tail_share"] == pytest.approx(3 / 5)


def test_popularity_percentiles_all_tied_and_popularity_from_csr() -> None:
    assert popularity_percentiles(np.array([0, 2, 2, 2]))[1:].tolist() == [0.5, 0.5, 0.5]
    train = csr_of({0: {1, 2}, 1: {2}, 2: {2, 3}}, 3)
    assert item_popularity(train, 4).tolist() == [0, 1, 3, 1, 0]


# --------------------------------------------------------------------------- tables


def test_result_rows_and_metrics_table() -> None:
    protocol = Protocol("random_by_user", "test")
    assert protocol.describe(10) == (
        "random_by_user/test, full ranking over all items, train items excluded, K=10"
    )
    assert protocol.to_dict()["candidates"] == "all_items"
    values = {("ndcg", 10): 0.25, ("hr", 10): 0.5, ("hr", 5): 0.4, ("coverage", 10): 0.1}
    results = [
        EvaluationResult("popularity", protocol, 1234, {**values, USERS_KEY: 1234.0}),
        EvaluationResult("als", protocol, 1234, {("hr", 10): 0.75}),
    ]
    rows = results[0].rows()
    assert [(r["metric"], r["k"]) for r in rows] == [
        ("hr", 5),
        ("hr", 10),
        ("ndcg", 10),
        ("coverage", 10),
    ]
    assert rows[0] == {
        "model": "popularity",
        "protocol": "random_by_user",
        "split": "test",
        "metric": "hr",
        "k": 5,
        "value": 0.4,
        "ci_low": None,
        "ci_high": None,
        "resamples": None,
    }
    table = metrics_table(results, 10)
    lines = table.splitlines()
    assert lines[0] == protocol.describe(10) + ", 1,234 users"
    assert lines[1].split() == ["model", "hr@10", "ndcg@10", "coverage@10"]
    assert "hr@5" not in table
    assert lines[3].split() == ["popularity", "0.5", "0.25", "0.1"]
    assert lines[4].split() == ["als", "0.75"]
    # With bootstrap resamples: the percentile interval in rows, manifests and the table.
    draws = np.array([0.21, 0.23, 0.25, 0.27, 0.29])
    boot = EvaluationResult("als", protocol, 1234, {("ndcg", 10): 0.25}, {("ndcg", 10): draws})
    low, high = np.percentile(draws, [2.5, 97.5])
    (row,) = boot.rows()
    assert (row["ci_low"], row["ci_high"], row["resamples"]) == (low, high, draws.tolist())
    assert boot.metric_texts() == {"ndcg@10": f"0.2500 [{low:.4f}, {high:.4f}]"}
    assert metrics_table([boot], 10).splitlines()[3].split() == [
        "als", "0.2500", f"[{low:.4f},", f"{high:.4f}]"
    ]  # fmt: skip


def test_metrics_table_rejects_mixed_protocols() -> None:
    results = [
        EvaluationResult("a", Protocol("random_by_user", "test"), 1, {}),
        EvaluationResult("b", Protocol("leave_last_out", "test"), 1, {}),
    ]
    with pytest.raises(ValueError):
        metrics_table(results, 5)


# --------------------------------------------------------------------------- Spark parity


def test_spark_metrics_match_numpy(spark: SparkSession) -> None:
    rng = np.random.default_rng(2026)
    n_users, n_items, list_len = 200, 50, 10
    ks = [1, 3, 5, 10, 15]  # 15 is longer than the lists
    truth_sets = {
        u: set(rng.choice(np.arange(1, n_items + 1), size=rng.integers(0, 7), replace=False))
        for u in range(n_users)
    }
    truth = csr_of(truth_sets, n_users)
    users = np.arange(n_users)
    recommended = np.array(
        [rng.choice(np.arange(1, n_items + 1), size=list_len, replace=False) for _ in users]
    )
    recommended[::17, 7:] = 0  # some short lists padded with item 0
    absent = users % 23 == 5  # users with no recs at all in Spark: all padding in numpy
    recommended[absent] = 0

    rec_rows = [
        (int(u), int(item), rank + 1)
        for u in users[~absent]
        for rank, item in enumerate(recommended[u])
        if item != 0
    ]
    truth_rows = [(u, int(i)) for u, items in truth_sets.items() for i in items]
    recs_df = spark.createDataFrame(rec_rows, "user_idx int, item_idx int, rank int")
    truth_df = spark.createDataFrame(truth_rows, "user_idx int, item_idx int")

    expected = ranking_metrics(recommended, truth, users, ks)
    got, resamples, _, _ = spark_ranking_metrics(recs_df, truth_df, ks, n_items, (200, 3))
    assert 150 < expected[USERS_KEY] < n_users  # some users have no truth
    # The executors' bootstrap sums give the one-process resample means.
    local = resample_means(*per_user_ranking_metrics(recommended, truth, users, ks), 200, 3)
    assert resamples.keys() == local.keys() == {(name, k) for name in METRICS for k in ks}
    for key, means in local.items():
        np.testing.assert_allclose(resamples[key], means, rtol=1e-9, err_msg=str(key))
    assert got[USERS_KEY] == expected[USERS_KEY]
    for k in ks:
        for name in METRICS:
            assert got[(name, k)] == pytest.approx(expected[(name, k)], abs=1e-9), (name, k)
        coverage = beyond_accuracy(recommended, k, np.ones(n_items + 1), 1)["coverage"]
        assert got[("coverage", k)] == pytest.approx(coverage, abs=1e-9)


def test_users_per_block_fits_the_dense_rows_in_the_budget() -> None:
    from recpipe.errors import BlockTooLargeError
    from recpipe.evaluation.ranking import ROW_COPIES, users_per_block

    # 200k items: one user's rows take 200,001 x 8 bytes x ROW_COPIES.
    row = 200_001 * 8 * ROW_COPIES
    assert users_per_block(200_000, 1024, 256, "evaluation.block_mib") == 256 * 2**20 // row
    assert users_per_block(1_000, 1024, 256, "evaluation.block_mib") == 1024  # wanted is less
    assert users_per_block(200_000, 7, 256, "evaluation.block_mib") == 7
    with pytest.raises(BlockTooLargeError, match=r"evaluation\.block_mib=1 MiB .* 50,000 items"):
        users_per_block(50_000, 1024, 1, "evaluation.block_mib")
