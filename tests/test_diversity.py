"""Intra-list diversity by genre: the numpy (bit mask) and Spark (set functions) versions
against a hand-computed example (the engines against each other: test_scoring)."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import SparkSession

from recpipe.catalogue_mix import intra_list_diversity
from recpipe.evaluation.diversity import local_intra_list_diversity

# Items 1..5 and their genres; item 5's genre has code 70, past the first 64-bit word.
GENRES = {1: {0}, 2: {0, 1}, 3: {2}, 4: {0}, 5: {70}}
LISTS = [[1, 2, 3], [4, 1, 0], [3, 0, 0], [5, 3, 1]]  # 0 pads a short list
# Jaccard distances by hand: d(1,2)=1/2, d(1,3)=d(2,3)=1, d(4,1)=0, item 5 shares nothing.
EXPECTED = {
    2: np.mean([0.5, 0.0, 1.0]),  # user 3 has no pair at k=2 or 3
    3: np.mean([(0.5 + 1 + 1) / 3, 0.0, (1 + 1 + 1) / 3]),
}


def masks() -> np.ndarray:
    bits = np.zeros((6, 2), np.uint64)
    for item, codes in GENRES.items():
        for code in codes:
            bits[item, code // 64] |= np.uint64(1) << np.uint64(code % 64)
    return bits


def test_numpy_version_matches_the_hand_computed_example() -> None:
    got = local_intra_list_diversity(np.array(LISTS), masks(), [2, 3])
    assert got == pytest.approx(EXPECTED, rel=1e-12)
    assert np.isnan(local_intra_list_diversity(np.array([[3, 0]]), masks(), [2])[2])


def test_spark_version_matches_the_hand_computed_example(spark: SparkSession) -> None:
    rows = [
        (user, rank, item)
        for user, items in enumerate(LISTS)
        for rank, item in enumerate(items, start=1)
        if item != 0
    ]
    recs = spark.createDataFrame(rows, "user_idx int, rank int, item_idx int")
    values = spark.createDataFrame(
        [(item, f"g{code}") for item, codes in GENRES.items() for code in codes],
        "item_idx int, _value string",
    )
    got = intra_list_diversity(recs, values, list(EXPECTED), "item_idx")
    for k, expected in EXPECTED.items():
        assert got[k] == pytest.approx(expected)
