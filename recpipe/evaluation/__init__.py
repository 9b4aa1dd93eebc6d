"""Evaluation: full-catalogue top-K ranking, ranking and beyond-accuracy metrics, tables.

The Spark implementation lives in :mod:`recpipe.evaluation.spark_metrics` and is not
imported here, so the numpy path does not pull in pyspark.
"""

from __future__ import annotations

from recpipe.evaluation.metrics import (
    BEYOND_ACCURACY,
    METRICS,
    USERS_KEY,
    EvaluationResult,
    beyond_accuracy,
    beyond_accuracy_of_counts,
    item_popularity,
    metrics_table,
    popularity_percentiles,
    ranking_metrics,
    recommendation_counts,
)
from recpipe.evaluation.protocol import ALL_ITEMS, Protocol
from recpipe.evaluation.ranking import PAD_ITEM, csr_from_pairs, csr_rows, top_k

__all__ = [
    "ALL_ITEMS",
    "BEYOND_ACCURACY",
    "METRICS",
    "PAD_ITEM",
    "USERS_KEY",
    "EvaluationResult",
    "Protocol",
    "beyond_accuracy",
    "beyond_accuracy_of_counts",
    "csr_from_pairs",
    "csr_rows",
    "item_popularity",
    "metrics_table",
    "popularity_percentiles",
    "ranking_metrics",
    "recommendation_counts",
    "top_k",
]
