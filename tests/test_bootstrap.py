"""The paired Poisson bootstrap: weights, resample means and intervals against by-hand sums."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recpipe.evaluation.bootstrap import (
    Interval,
    ResampleSums,
    paired_difference,
    percentile_interval,
    poisson_weights,
    resample_means,
)


def test_weights_are_poisson_one_and_a_pure_function_of_seed_resample_user() -> None:
    users = np.arange(20_000)
    weights = poisson_weights(users, 50, seed=4)
    assert weights.shape == (20_000, 50)
    assert np.array_equal(weights, np.round(weights)) and weights.min() == 0
    # Poisson(1): mean 1, variance 1, P(0) = P(1) = 1/e, P(2) = 1/(2e) (1M draws).
    assert weights.mean() == pytest.approx(1.0, abs=0.005)
    assert weights.var() == pytest.approx(1.0, abs=0.01)
    for value, probability in ((0, math.exp(-1)), (1, math.exp(-1)), (2, math.exp(-1) / 2)):
        assert (weights == value).mean() == pytest.approx(probability, abs=0.003)
    # No correlation between neighbouring users or neighbouring resamples.
    assert abs(np.corrcoef(weights[:-1, 0], weights[1:, 0])[0, 1]) < 0.03
    assert abs(np.corrcoef(weights[:, 0], weights[:, 1])[0, 1]) < 0.03
    # A user's weights do not depend on which other users share the block, or their order.
    shuffled = np.random.default_rng(0).permutation(users)[:500]
    assert np.array_equal(poisson_weights(shuffled, 50, seed=4), weights[shuffled])
    assert not np.array_equal(poisson_weights(users[:500], 50, seed=5), weights[:500])


def test_resample_means_equal_weighted_means_computed_by_hand() -> None:
    rng = np.random.default_rng(1)
    users = rng.choice(10_000, size=300, replace=False)
    ndcg, hit = rng.random(300), (rng.random(300) < 0.3).astype(float)
    means = resample_means(users, {"ndcg": ndcg, "hr": hit}, resamples=40, seed=9)
    for r in range(40):
        total = weight = hits = 0.0
        for u, value, h in zip(users, ndcg, hit, strict=True):
            w = float(poisson_weights(np.array([u]), 40, 9)[0, r])
            total, weight, hits = total + w * value, weight + w, hits + w * h
        assert means["ndcg"][r] == pytest.approx(total / weight, rel=1e-12)
        assert means["hr"][r] == pytest.approx(hits / weight, rel=1e-12)


def test_counted_mask_leaves_absent_values_out_of_their_columns_only() -> None:
    """One call with a 0/1 mask (users lacking some columns) gives each column the sums of a
    call over just the users that have it."""
    rng = np.random.default_rng(3)
    users, values = np.arange(500), rng.random((500, 2))
    counted = np.ones((500, 2))
    counted[rng.random(500) < 0.4, 1] = 0.0
    masked = ResampleSums(2, 25, seed=7)
    masked.add(users, values * counted, range(2), counted)
    first, second = ResampleSums(2, 25, seed=7), ResampleSums(2, 25, seed=7)
    first.add(users, values[:, :1], [0])
    has = counted[:, 1] == 1
    second.add(users[has], values[has, 1:], [1])
    np.testing.assert_allclose(masked.means()[:, 0], first.means()[:, 0], rtol=1e-12)
    np.testing.assert_allclose(masked.means()[:, 1], second.means()[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(masked.weights[:, 1], second.weights[:, 1])


def test_sums_merge_across_blocks_like_one_pass() -> None:
    rng = np.random.default_rng(2)
    users, values = np.arange(1000), rng.random((1000, 3))
    whole = ResampleSums(3, 30, seed=1)
    whole.add(users, values, range(3))
    parts = [ResampleSums(3, 30, seed=1) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(np.arange(1000), 3), strict=True):
        part.add(users[rows], values[rows], range(3))
    parts[0].merge(parts[1])
    parts[0].merge(parts[2])
    np.testing.assert_allclose(parts[0].means(), whole.means(), rtol=1e-12)


def test_interval_width_matches_the_standard_error_of_a_mean() -> None:
    """With 5,000 users the bootstrap's spread is the textbook sd / sqrt(n) (within 10 %),
    and the percentile interval is that of the resample means."""
    rng = np.random.default_rng(3)
    values = rng.random(5000) ** 3
    means = resample_means(np.arange(5000), {"m": values}, 1000, seed=0)["m"]
    assert means.std() == pytest.approx(values.std() / math.sqrt(5000), rel=0.1)
    interval = percentile_interval(means, 0.95)
    assert (interval.low, interval.high) == tuple(np.percentile(means, [2.5, 97.5]))
    assert interval.low < values.mean() < interval.high


def test_paired_difference_cancels_shared_user_noise() -> None:
    """Two models that differ by a constant 0.01 on every user: the paired interval is that
    constant, although each model's own interval is far wider than 0.01."""
    rng = np.random.default_rng(4)
    users, base = np.arange(2000), rng.random(2000)
    means = resample_means(users, {"a": base + 0.01, "b": base}, 500, seed=0)
    own = percentile_interval(means["b"], 0.95)
    assert own.high - own.low > 0.02
    difference = paired_difference(means["a"], means["b"], 0.95)
    assert difference.low == pytest.approx(0.01) and difference.high == pytest.approx(0.01)
    assert difference.excludes(0.0)
    noise = paired_difference(means["b"], means["b"], 0.95)
    assert noise == Interval(0.0, 0.0) and not noise.excludes(0.0)
    with pytest.raises(ValueError, match="differ in count"):
        paired_difference(means["a"][:10], means["b"], 0.95)


def test_no_users_or_no_resamples() -> None:
    assert resample_means(np.arange(3), {"m": np.ones(3)}, 0, seed=0) == {}
    empty = resample_means(np.zeros(0, dtype=int), {"m": np.zeros(0)}, 5, seed=0)["m"]
    assert np.isnan(empty).all()
    nan = percentile_interval(empty, 0.95)
    assert math.isnan(nan.low) and math.isnan(nan.high)
