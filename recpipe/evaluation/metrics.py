"""Top-K ranking metrics with binary relevance, beyond-accuracy metrics, and result tables.

For one user with truth set T (the held-out items) and a ranked list, let hit(r) = 1 when the
item at rank r (1-based) is in T, hits@K = sum of hit(r) for r <= K, and m = min(|T|, K):

* HR@K        = 1 if hits@K > 0 else 0
* Precision@K = hits@K / K (K, not the list length: a list shorter than K counts as misses)
* Recall@K    = hits@K / |T|
* NDCG@K      = DCG@K / IDCG@K, DCG@K = sum over hit ranks r <= K of 1 / log2(r + 1) and
                IDCG@K = sum over r = 1..m of 1 / log2(r + 1) (all m ideal hits first)
* MAP@K       = (1 / m) * sum over hit ranks r <= K of Precision@r
* MRR@K       = 1 / (rank of the first hit) if that rank <= K else 0

Each is averaged over the evaluated users: those with at least one truth item. Item 0 is
padding and never a hit. Lists are assumed free of repeated items (as :func:`top_k` makes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recpipe.console import format_table
from recpipe.evaluation.activity import ActivityGroups
from recpipe.evaluation.bootstrap import Interval, percentile_interval
from recpipe.evaluation.protocol import Protocol
from recpipe.evaluation.ranking import PAD_ITEM, Csr, csr_rows
from recpipe.evaluation.segments import Segments

METRICS: tuple[str, ...] = ("hr", "precision", "recall", "ndcg", "map", "mrr")
BEYOND_ACCURACY: tuple[str, ...] = (
    "coverage", "popularity_percentile", "novelty", "arp", "long_tail_share"
)  # fmt: skip
# The short head: catalogue items at or above this train-popularity percentile (the top 20 %).
HEAD_PERCENTILE = 0.8
# The number of evaluated users rides along in metric dicts under this key.
USERS_KEY: tuple[str, int] = ("users", 0)

MetricValues = dict[tuple[str, int], float]


def check_ks(ks: Sequence[int]) -> list[int]:
    """Sorted distinct cut-offs; raises ``ValueError`` when empty or not all positive."""
    unique = sorted({int(k) for k in ks})
    if not unique or unique[0] < 1:
        raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
    return unique


def discounts(k_max: int) -> np.ndarray:
    """1 / log2(r + 1) for ranks r = 1..k_max."""
    return 1.0 / np.log2(np.arange(2, k_max + 2, dtype=np.float64))


def ideal_dcg(k_max: int) -> np.ndarray:
    """IDCG for m = 1..k_max ideal hits (entry m - 1)."""
    return np.cumsum(discounts(k_max))


def ranking_metrics(
    recommended: np.ndarray, truth: Csr, users: np.ndarray, ks: Sequence[int]
) -> MetricValues:
    """Mean ``(metric, k)`` over evaluated users, plus ``USERS_KEY`` -> their count.

    Row i of ``recommended`` [U, Kmax] is the ranked list of ``users[i]``; ``truth`` is a CSR
    indexed by user idx. Users without truth items are skipped; with none left every metric
    is NaN. Only ``users`` are evaluated: truth users missing from it are not counted.
    """
    return user_means(*per_user_ranking_metrics(recommended, truth, users, ks))


def user_means(evaluated: np.ndarray, per_user: dict[tuple[str, int], np.ndarray]) -> MetricValues:
    """Each metric's mean over the evaluated users (NaN with none), plus ``USERS_KEY``."""
    values: MetricValues = {key: _mean(column) for key, column in per_user.items()}
    values[USERS_KEY] = float(evaluated.size)
    return values


def per_user_ranking_metrics(
    recommended: np.ndarray, truth: Csr, users: np.ndarray, ks: Sequence[int]
) -> tuple[np.ndarray, dict[tuple[str, int], np.ndarray]]:
    """(evaluated users, ``(metric, k)`` -> each evaluated user's value), the inputs of
    :func:`ranking_metrics`' means and of the bootstrap over users."""
    ks = check_ks(ks)
    recommended = np.asarray(recommended, dtype=np.int64)
    users = np.asarray(users, dtype=np.int64).ravel()
    if recommended.ndim != 2 or recommended.shape[0] != users.size:
        raise ValueError(f"recommended {recommended.shape} must be [len(users)={users.size}, K]")
    n_truth, truth_items = csr_rows(truth, users)
    evaluated = n_truth > 0
    hits = _hit_matrix(recommended, n_truth, truth_items)[evaluated]
    hits = _fit_width(hits, ks[-1])
    return users[evaluated], _per_k_values(hits, n_truth[evaluated], ks)


def _hit_matrix(
    recommended: np.ndarray, n_truth: np.ndarray, truth_items: np.ndarray
) -> np.ndarray:
    """Boolean [U, Kmax]: is each recommended item in its row's truth set."""
    n_rows = recommended.shape[0]
    top_item = max(int(recommended.max(initial=0)), int(truth_items.max(initial=0)))
    # One int64 key per (row, item) pair turns the per-row membership test into one np.isin.
    stride = top_item + 1
    truth_keys = np.repeat(np.arange(n_rows, dtype=np.int64), n_truth) * stride + truth_items
    row_keys = np.arange(n_rows, dtype=np.int64)[:, None] * stride + recommended
    return np.isin(row_keys, truth_keys) & (recommended != PAD_ITEM)


def _fit_width(hits: np.ndarray, width: int) -> np.ndarray:
    """Cut or pad (with misses) the hit matrix to ``width`` columns."""
    if hits.shape[1] >= width:
        return hits[:, :width]
    pad = np.zeros((hits.shape[0], width - hits.shape[1]), dtype=bool)
    return np.hstack([hits, pad])


def _per_k_values(
    hits: np.ndarray, n_truth: np.ndarray, ks: list[int]
) -> dict[tuple[str, int], np.ndarray]:
    """Every metric at every K, per user, from the [users, Kmax] hit matrix."""
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * discounts(hits.shape[1]), axis=1)
    cum_precision = np.cumsum(hits * (cum_hits / ranks), axis=1)
    idcg = ideal_dcg(hits.shape[1])
    any_hit = hits.any(axis=1)
    first_rank = np.where(any_hit, hits.argmax(axis=1) + 1, hits.shape[1] + 1)
    values: dict[tuple[str, int], np.ndarray] = {}
    for k in ks:
        n_hits = cum_hits[:, k - 1]
        ideal = np.minimum(n_truth, k)
        per_user = {
            "hr": (n_hits > 0).astype(np.float64),
            "precision": n_hits / k,
            "recall": n_hits / n_truth,
            "ndcg": cum_dcg[:, k - 1] / idcg[ideal - 1],
            "map": cum_precision[:, k - 1] / ideal,
            "mrr": np.where(first_rank <= k, 1.0 / first_rank, 0.0),
        }
        for name in METRICS:
            values[(name, k)] = per_user[name]
    return values


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def item_popularity(train: Csr, n_items: int) -> np.ndarray:
    """[n_items + 1] number of distinct train users per item, from a user -> items CSR."""
    return np.bincount(train[1], minlength=n_items + 1)[: n_items + 1]


def popularity_percentiles(item_popularity: np.ndarray) -> np.ndarray:
    """[n_items + 1] percentile of each item's popularity among catalogue items 1..n_items.

    With items ranked by ascending popularity (1..n, ties sharing their average rank),
    percentile = (rank - 1) / (n - 1): 0 = least, 1 = most popular; a lone item gets 0.5,
    as do all items when every popularity is equal. Entry 0 (padding) is NaN.
    """
    popularity = np.asarray(item_popularity, dtype=np.float64)
    n_items = popularity.size - 1
    ordered = np.sort(popularity[1:])
    below = np.searchsorted(ordered, popularity, side="left")
    up_to = np.searchsorted(ordered, popularity, side="right")
    mean_rank = (below + 1 + up_to) / 2.0
    percentile = (mean_rank - 1) / (n_items - 1) if n_items > 1 else np.full(n_items + 1, 0.5)
    percentile[0] = np.nan
    return percentile


def recommendation_counts(recommended: np.ndarray, k: int, n_items: int) -> np.ndarray:
    """[n_items + 1] how often each item appears in the top ``k`` of the lists (padding,
    entry 0, is not counted): all that beyond-accuracy metrics and the report need."""
    top = np.asarray(recommended, dtype=np.int64)[:, :k]
    counts = np.bincount(top[top != PAD_ITEM], minlength=n_items + 1)
    return counts[: n_items + 1]


def beyond_accuracy(
    recommended: np.ndarray, k: int, item_popularity: np.ndarray, n_users_train: int
) -> dict[str, float]:
    """:func:`beyond_accuracy_of_counts` of the top-``k`` lists ``recommended`` [U, >= k]."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    counts = recommendation_counts(recommended, k, np.asarray(item_popularity).size - 1)
    return beyond_accuracy_of_counts(counts, item_popularity, n_users_train)


def beyond_accuracy_of_counts(
    counts: np.ndarray, item_popularity: np.ndarray, n_users_train: int
) -> dict[str, float]:
    """``coverage``, ``popularity_percentile``, ``novelty``, ``arp`` and ``long_tail_share`` of
    top-K lists given as how often each item was recommended (:func:`recommendation_counts`):

    * coverage: distinct recommended items / n_items (catalogue = items 1..n_items);
    * popularity_percentile: mean over every recommended entry of
      :func:`popularity_percentiles` (1 = the most popular item);
    * novelty: mean over every recommended entry of -log2(popularity / n_users_train), where
      an item no train user touched counts as popularity 1 so that it stays finite;
    * arp (average recommendation popularity): mean over every recommended entry of the
      item's train popularity (distinct train users);
    * long_tail_share: the share of recommended entries outside the short head, the items at
      or above the ``HEAD_PERCENTILE`` (0.8) popularity percentile, i.e. the top 20 % (with
      equal-length lists this is the average percentage of long-tail items, APLT).

    Padding (entry 0) is ignored; with no recommended entry the means are NaN.
    """
    if n_users_train < 1:
        raise ValueError(f"n_users_train must be positive, got {n_users_train}")
    popularity = np.asarray(item_popularity)
    n_items = popularity.size - 1
    counts = np.asarray(counts, dtype=np.int64).copy()
    counts[PAD_ITEM] = 0
    entries = int(counts.sum())
    items = np.flatnonzero(counts)
    self_information = -np.log2(np.maximum(popularity[items], 1) / n_users_train)
    percentile = popularity_percentiles(popularity)[items]
    weights = counts[items]
    long_tail = (percentile < HEAD_PERCENTILE).astype(np.float64)
    return {
        "coverage": items.size / n_items,
        "popularity_percentile": _weighted_mean(percentile, weights, entries),
        "novelty": _weighted_mean(self_information, weights, entries),
        "arp": _weighted_mean(popularity[items].astype(np.float64), weights, entries),
        "long_tail_share": _weighted_mean(long_tail, weights, entries),
    }


def _weighted_mean(values: np.ndarray, weights: np.ndarray, total: int) -> float:
    return float(np.dot(values, weights) / total) if total else float("nan")


@dataclass
class EvaluationResult:
    """One model's metrics under one protocol; ``values`` maps (metric, k) to its value.

    ``resamples`` holds, for the user-averaged metrics, the paired bootstrap's resample means
    (:mod:`recpipe.evaluation.bootstrap`); their percentile interval at ``confidence`` is
    :meth:`interval`. Beyond-accuracy metrics are catalogue-level and carry none.
    """

    model: str
    protocol: Protocol
    n_users: int
    values: MetricValues
    resamples: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    confidence: float = 0.95
    groups: ActivityGroups | None = None  # the same metrics per user-activity quartile
    segments: list[Segments] | None = None  # ... and per profile group (gender, age band)

    def interval(self, key: tuple[str, int]) -> Interval | None:
        """The ``confidence`` interval of metric ``key``, or None without resamples."""
        if key not in self.resamples:
            return None
        return percentile_interval(self.resamples[key], self.confidence)

    def rows(self) -> list[dict[str, Any]]:
        """One row per (metric, k): model, protocol, split, metric, k, value, the interval
        (``ci_low``, ``ci_high``; None without one) and the ``resamples`` (a list or None)."""
        rows = []
        for (metric, k), value in sorted(self.values.items(), key=_metric_order):
            if (metric, k) == USERS_KEY:
                continue
            interval = self.interval((metric, k))
            resamples = self.resamples.get((metric, k))
            rows.append(
                {
                    "model": self.model,
                    "protocol": self.protocol.split_protocol,
                    "split": self.protocol.split,
                    "metric": metric,
                    "k": k,
                    "value": value,
                    "ci_low": None if interval is None else interval.low,
                    "ci_high": None if interval is None else interval.high,
                    "resamples": None if resamples is None else resamples.tolist(),
                }
            )
        return rows

    def metric_texts(self) -> dict[str, str]:
        """``metric@k`` -> its value with the interval when there is one, e.g.
        ``0.4839 [0.4712, 0.4961]`` (manifests, summaries)."""
        return {
            f"{metric}@{k}": with_interval(value, self.interval((metric, k)))
            for (metric, k), value in sorted(self.values.items(), key=_metric_order)
            if (metric, k) != USERS_KEY
        }


def with_interval(value: float, interval: Interval | None) -> str:
    """``0.4839`` or ``0.4839 [0.4712, 0.4961]``: four decimals, the interval in brackets."""
    text = f"{value:.4f}"
    if interval is None:
        return text
    return f"{text} [{interval.low:.4f}, {interval.high:.4f}]"


@dataclass
class Evaluation:
    """A result plus what the report needs, item-sized whatever the number of users: how often
    each item was recommended in the top K (per K) and its train popularity."""

    result: EvaluationResult
    top_counts: dict[int, np.ndarray]  # K -> [n_items + 1] recommendation_counts
    catalogue_popularity: np.ndarray


def group_by_protocol(evaluations: Sequence[Evaluation]) -> dict[Protocol, list[Evaluation]]:
    """Evaluations grouped by protocol, in first-seen order."""
    groups: dict[Protocol, list[Evaluation]] = {}
    for evaluation in evaluations:
        groups.setdefault(evaluation.result.protocol, []).append(evaluation)
    return groups


def _metric_order(entry: tuple[tuple[str, int], float]) -> tuple[int, str, int]:
    (metric, k), _ = entry
    known = METRICS + BEYOND_ACCURACY
    position = known.index(metric) if metric in known else len(known)
    return position, metric, k


def metrics_table(results: Sequence[EvaluationResult], k: int) -> str:
    """Text table for one K: a row per model, a column per metric (``ndcg@10``, ...); a
    metric with bootstrap resamples shows its interval, ``0.4839 [0.4712, 0.4961]``.

    The title is the shared protocol's :meth:`Protocol.describe` and the number of users; if
    models were evaluated on different user counts, a ``users`` column shows each instead.
    """
    if not results:
        return format_table([], title=f"K={k}")
    protocols = {result.protocol for result in results}
    if len(protocols) > 1:
        raise ValueError("metrics_table needs results from a single protocol")
    user_counts = {result.n_users for result in results}
    title = results[0].protocol.describe(k)
    if len(user_counts) == 1:
        title += f", {results[0].n_users:,} users"
    return format_table([table_row(r, k, len(user_counts) > 1) for r in results], title=title)


def table_row(result: EvaluationResult, k: int, with_users: bool) -> dict[str, Any]:
    """One model's row of a metrics table at ``k``: a cell per metric, with its interval
    when it has one (``0.4839 [0.4712, 0.4961]``)."""
    row: dict[str, Any] = {"model": result.model}
    if with_users:
        row["users"] = result.n_users
    for entry in sorted(result.values.items(), key=_metric_order):
        (metric, at), value = entry
        if at == k:
            interval = result.interval((metric, at))
            row[f"{metric}@{k}"] = value if interval is None else with_interval(value, interval)
    return row
