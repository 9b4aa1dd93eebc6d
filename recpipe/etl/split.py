"""Train/valid/test split protocols over interactions (one row per user-item event)."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recpipe.etl.sessionize import EVENT_RANK, TS_MS
from recpipe.schema import ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from recpipe.spark import one_row

PART = "part"
TRAIN, VALID, TEST = "train", "valid", "test"
PARTS: tuple[str, ...] = (TRAIN, VALID, TEST)

# Chronological order within a user; item id breaks ties so the order is total.
_CHRONO = (TS_MS, EVENT_RANK, ITEM_IDX)


def dedupe_user_item(interactions: DataFrame) -> DataFrame:
    """Keep each user's first interaction with each item (in chronological order)."""
    first = Window.partitionBy(USER_IDX, ITEM_IDX).orderBy(*_CHRONO)
    return (
        interactions.withColumn("_rn", F.row_number().over(first))
        .where(F.col("_rn") == 1)
        .drop("_rn")
    )


def leave_last_out(interactions: DataFrame, *, min_interactions: int) -> DataFrame:
    """Per user: last interaction -> test, the one before -> valid, the rest -> train.

    Users with fewer than ``min_interactions`` go wholly to train.
    """
    latest_first = Window.partitionBy(USER_IDX).orderBy(*(F.col(c).desc() for c in _CHRONO))
    per_user = Window.partitionBy(USER_IDX)
    rn = F.row_number().over(latest_first)
    n = F.count(F.lit(1)).over(per_user)
    part = (
        F.when(n < min_interactions, F.lit(TRAIN))
        .when(rn == 1, F.lit(TEST))
        .when(rn == 2, F.lit(VALID))
        .otherwise(F.lit(TRAIN))
    )
    return interactions.withColumn(PART, part)


def random_by_user(interactions: DataFrame, *, train: float, valid: float, seed: int) -> DataFrame:
    """Per-user stratified random split: each user's interactions shuffled by a seeded hash.

    The first ``max(1, round(n * train))`` go to train, up to ``round(n * (train + valid))``
    to valid, the rest to test, so every user keeps at least one train interaction.
    """
    shuffle_key = F.xxhash64(F.lit(seed), USER_ID, ITEM_ID, TS_MS, EVENT_RANK)
    order = Window.partitionBy(USER_IDX).orderBy(shuffle_key, *_CHRONO)
    rn = F.row_number().over(order)
    n = F.count(F.lit(1)).over(Window.partitionBy(USER_IDX))
    train_cut = F.greatest(F.lit(1), F.round(n * train))
    valid_cut = F.greatest(train_cut, F.round(n * (train + valid)))
    part = (
        F.when(rn <= train_cut, F.lit(TRAIN))
        .when(rn <= valid_cut, F.lit(VALID))
        .otherwise(F.lit(TEST))
    )
    return interactions.withColumn(PART, part)


def temporal_cuts(
    interactions: DataFrame, *, test_ratio: float, valid_ratio: float
) -> tuple[int, int]:
    """Epoch-ms cuts (``valid``, ``test``) for :func:`temporal` so that the latest
    ``test_ratio`` of interactions (and ``valid_ratio`` before them) fall at or after them.

    ``percentile_disc(p)`` is the time of the last interaction that belongs below the cut;
    the cut is one millisecond later, since :func:`temporal` sends ``ts >= cut`` up.
    """

    def disc(fraction: float) -> F.Column:
        return F.expr(f"percentile_disc({fraction!r}) WITHIN GROUP (ORDER BY {TS_MS})")

    row = one_row(
        interactions.agg(
            disc(1.0 - test_ratio).alias("test"),
            disc(1.0 - test_ratio - valid_ratio).alias("valid"),
        ),
        "temporal cuts",
    )
    return int(row["valid"]) + 1, int(row["test"]) + 1


FIRST_MS = "_first_ms"


def first_seen(interactions: DataFrame, key: str) -> DataFrame:
    """(key, ts_ms): each item's (``key=item_idx``) or user's first interaction time."""
    return interactions.groupBy(key).agg(F.min(TS_MS).alias(TS_MS))


def cold_start(
    interactions: DataFrame, key: str, *, valid_cut_ms: int, test_cut_ms: int
) -> DataFrame:
    """Cold start of the items (``key=item_idx``) or users (``user_idx``): every interaction
    of one first seen at or after ``test_cut`` -> test, of one first seen from ``valid_cut``
    -> valid, the rest (all interactions of those known before the cuts, whenever they
    happen) -> train. So a scored item (or user) has no train interaction at all."""
    first = first_seen(interactions, key).select(key, F.col(TS_MS).alias(FIRST_MS))
    part = (
        F.when(F.col(FIRST_MS) >= test_cut_ms, F.lit(TEST))
        .when(F.col(FIRST_MS) >= valid_cut_ms, F.lit(VALID))
        .otherwise(F.lit(TRAIN))
    )
    return interactions.join(first, key).withColumn(PART, part).drop(FIRST_MS)


def temporal(interactions: DataFrame, *, valid_cut_ms: int, test_cut_ms: int) -> DataFrame:
    """Global time cut: ``ts >= test_cut`` -> test, ``valid_cut <= ts < test_cut`` -> valid."""
    part = (
        F.when(F.col(TS_MS) >= test_cut_ms, F.lit(TEST))
        .when(F.col(TS_MS) >= valid_cut_ms, F.lit(VALID))
        .otherwise(F.lit(TRAIN))
    )
    return interactions.withColumn(PART, part)
