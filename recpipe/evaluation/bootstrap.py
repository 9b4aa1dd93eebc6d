"""Paired Poisson bootstrap over users: confidence intervals for user-averaged metrics.

Resample r gives user u the weight w(u, r) ~ Poisson(1), drawn from a counter-based hash of
(seed, r, user_idx) rather than from a stateful generator. Three things follow:

* the weights of a user do not depend on where the user is processed, so executors add up
  their own users and only B sums per metric reach the driver (driver-flat at any scale);
* every model evaluated on the same users with the same seed gets the same weights, so the
  difference of two models' resample means is a *paired* bootstrap of their difference;
* both evaluation engines compute the same resamples (up to float summation order).

A resample's metric is the weighted mean sum_u w m_u / sum_u w (the Poisson bootstrap of a
mean); the interval is the percentile interval of the B resample means.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

# Poisson(1) inverse CDF: P(X <= x) for x = 0..19 (P(X > 19) < 1e-17, below a uniform's step).
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(x) for x in range(20)])
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Weights generated per block: users x resamples entries, bounding memory to a few MiB.
_BLOCK_ENTRIES = 1 << 20


@dataclass(frozen=True)
class Interval:
    """A percentile interval at ``confidence`` (e.g. 0.95)."""

    low: float
    high: float

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (a significant difference from it)."""
        return value < self.low or value > self.high


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective avalanche of 64-bit words (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def poisson_weights(users: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """float64 [len(users), resamples]: user u's Poisson(1) weight in each resample, a pure
    function of (seed, resample, user index)."""
    users = np.asarray(users, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        keys = _mix(users + np.uint64(seed & 0xFFFFFFFF) * _GOLDEN)
        steps = np.arange(1, resamples + 1, dtype=np.uint64) * _GOLDEN
        words = _mix(keys[:, None] + steps[None, :])
    uniform = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.float64)


class ResampleSums:
    """Per-resample running sums of weights and weighted values for ``columns`` metrics.

    Sums from different blocks of users (or different executors) add up with :meth:`merge`;
    :meth:`means` gives the [resamples, columns] resample means.
    """

    def __init__(self, columns: int, resamples: int, seed: int) -> None:
        self.resamples = resamples
        self.seed = seed
        self.weights = np.zeros((resamples, columns))
        self.sums = np.zeros((resamples, columns))

    def add(
        self,
        users: np.ndarray,
        values: np.ndarray,
        columns: Sequence[int],
        counted: np.ndarray | None = None,
    ) -> None:
        """Add users' ``values`` [len(users), len(columns)] to the sums of ``columns``.

        ``counted`` (same shape, 0/1) says which of them count, so that one call can take
        users that lack some columns (absent values must be 0); by default all count. Each
        user's weights are drawn once for all its columns.
        """
        users = np.asarray(users, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64).reshape(len(users), len(columns))
        if counted is not None:
            counted = np.asarray(counted, dtype=np.float64).reshape(values.shape)
        step = max(1, _BLOCK_ENTRIES // max(1, self.resamples))
        at = list(columns)
        for start in range(0, len(users), step):
            block = slice(start, start + step)
            weights = poisson_weights(users[block], self.resamples, self.seed)
            if counted is None:
                self.weights[:, at] += weights.sum(axis=0)[:, None]
            else:
                self.weights[:, at] += weights.T @ counted[block]
            self.sums[:, at] += weights.T @ values[block]

    def merge(self, other: ResampleSums) -> None:
        """Add another block's sums (same columns, resamples and seed)."""
        self.weights += other.weights
        self.sums += other.sums

    def means(self) -> np.ndarray:
        """[resamples, columns] weighted means; NaN where a resample drew no user."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.weights > 0, self.sums / self.weights, np.nan)


def percentile_interval(resample_means: np.ndarray, confidence: float) -> Interval:
    """The central ``confidence`` percentile interval of one metric's resample means (NaN
    resamples ignored; NaN bounds when none is left)."""
    finite = np.asarray(resample_means, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return Interval(float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(float(low), float(high))


def paired_difference(candidate: np.ndarray, baseline: np.ndarray, confidence: float) -> Interval:
    """Interval of ``candidate - baseline`` from resample means drawn with the same weights."""
    candidate, baseline = np.asarray(candidate), np.asarray(baseline)
    if candidate.shape != baseline.shape:
        raise ValueError(f"paired resamples differ in count: {candidate.shape} vs {baseline.shape}")
    return percentile_interval(candidate - baseline, confidence)


def resample_means(
    users: np.ndarray,
    per_user: Mapping[K, np.ndarray],
    resamples: int,
    seed: int,
) -> dict[K, np.ndarray]:
    """Each metric's ``resamples`` resample means over ``users`` (one process, blockwise)."""
    keys = list(per_user)
    if not keys or resamples < 1:
        return {}
    sums = ResampleSums(len(keys), resamples, seed)
    values = np.column_stack([np.asarray(per_user[key], dtype=np.float64) for key in keys])
    sums.add(users, values, range(len(keys)))
    means = sums.means()
    return {key: means[:, j] for j, key in enumerate(keys)}
