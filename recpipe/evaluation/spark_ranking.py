"""Evaluation's top-K on the Spark executors, and the item-side inputs it needs from Spark.

The executors run the block function of the local engine: a block of truth users with their
train histories is scored by :func:`recpipe.scoring.scorers.dense_evaluation_scorer` (full
score rows) and ranked by :func:`recpipe.evaluation.ranking.top_k` with the users' train
items masked, so both engines produce the same lists. Histories travel as a column joined per
user; the model is broadcast once per job; the driver only ever holds item-sized arrays
(known items, popularity, how often each item was recommended).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.baselines.popularity import distinct_users_per_item
from recpipe.evaluation.ranking import PAD_ITEM, top_k
from recpipe.schema import ITEM_IDX, TS, USER_IDX
from recpipe.scoring.distributed import (
    cached_scorer,
    histories_from_arrow,
    use_task_cores,
    user_blocks,
)
from recpipe.scoring.histories import UserHistories
from recpipe.scoring.inputs import HISTORY_ITEMS
from recpipe.scoring.scorers import (
    DenseScorer,
    ModelPayload,
    dense_evaluation_scorer,
    rebuild_model,
)

RANK = "rank"
RECS_DDL = f"{USER_IDX} int, {ITEM_IDX} int, {RANK} int"
RECS_SCHEMA = pa.schema([(USER_IDX, pa.int32()), (ITEM_IDX, pa.int32()), (RANK, pa.int32())])


@dataclass(frozen=True)
class RankSettings:
    """What each executor block computes: top ``k`` of ``n_items``, ``user_batch`` users at a
    time, train items masked when ``exclude_seen``."""

    k: int
    n_items: int
    user_batch: int
    exclude_seen: bool
    device: str = "cpu"


@dataclass(frozen=True)
class ItemSide:
    """Item-sized facts of a train split: what evaluation keeps on the driver."""

    popularity: np.ndarray  # [n_items + 1] distinct train users per item
    n_train_users: int

    @property
    def known_items(self) -> np.ndarray:
        """Bool [n_items + 1]: items with at least one train interaction (padding excluded)."""
        known = self.popularity > 0
        known[PAD_ITEM] = False
        return known


def item_side(train: DataFrame, n_items: int) -> ItemSide:
    """Distinct train users per item and in all, aggregated by Spark (one row per item and
    one row in all reach the driver)."""
    popularity = distinct_users_per_item(train, n_items)
    return ItemSide(popularity, int(train.select(USER_IDX).distinct().count()))


def train_histories(train: DataFrame) -> DataFrame:
    """``(user_idx, items)``: each user's train items, repeats kept, ordered by (second,
    item index): the order of the local engine's ``UserHistories.from_events``."""
    entry = F.struct(F.col(TS).cast("long").alias("second"), F.col(ITEM_IDX).alias(ITEM_IDX))
    ordered = F.array_sort(F.collect_list(entry))
    return train.groupBy(USER_IDX).agg(
        F.transform(ordered, lambda e: e[ITEM_IDX]).alias(HISTORY_ITEMS)
    )


def rank_block(scorer: DenseScorer, block: UserHistories, settings: RankSettings) -> pa.Table:
    """Recommendation rows (user, item, 1-based rank) of one block of users."""
    positions = np.arange(len(block))
    seen = None
    if settings.exclude_seen:
        # The block's own histories as a CSR indexed by position (repeats mask twice: harmless).
        seen = (np.concatenate([[0], np.cumsum(block.lengths)]), block.items)
    items, _ = top_k(
        lambda rows: scorer.score_rows(block.take(rows)),
        positions,
        settings.k,
        settings.n_items,
        seen,
        batch=max(1, len(block)),
    )
    keep = items != PAD_ITEM
    rows, ranks = np.nonzero(keep)
    return pa.table(
        [
            pa.array(block.users[rows], pa.int32()),
            pa.array(items[keep], pa.int32()),
            pa.array(ranks + 1, pa.int32()),
        ],
        schema=RECS_SCHEMA,
    )


class ExecutorRanker:
    """The ``mapInArrow`` function: (user_idx, items) batches -> recommendation rows."""

    def __init__(self, payload: Any, settings: RankSettings) -> None:
        self.payload = payload  # Broadcast[ModelPayload]
        self.settings = settings
        self.token = uuid.uuid4().hex

    def _build(self) -> DenseScorer:
        payload: ModelPayload = self.payload.value
        model = rebuild_model(payload)
        return dense_evaluation_scorer(
            model, payload.known_items, payload.train_users, self.settings.device
        )

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        use_task_cores()
        scorer = cached_scorer(self.token, self._build)
        for batch in batches:
            for block in user_blocks(histories_from_arrow(batch), self.settings.user_batch):
                yield from rank_block(scorer, block, self.settings).to_batches()


def rank_on_executors(
    spark: SparkSession,
    users: DataFrame,
    payload: ModelPayload,
    settings: RankSettings,
    partitions: int | None = None,
) -> DataFrame:
    """Top-K rows (``RECS_DDL``) for every row of ``users`` (user_idx, items), lazily."""
    context = spark.sparkContext
    function = ExecutorRanker(context.broadcast(payload), settings)
    spread = users.repartition(partitions or context.defaultParallelism)
    return spread.mapInArrow(function, RECS_DDL)


def top_item_counts(recs: DataFrame, ks: Sequence[int], n_items: int) -> dict[int, np.ndarray]:
    """K -> [n_items + 1] how often each item is in a top K (one row per item to the driver)."""
    counts = (
        recs.where(F.col(ITEM_IDX) != PAD_ITEM)
        .groupBy(ITEM_IDX)
        .agg(*(F.count(F.when(F.col(RANK) <= k, True)).alias(f"k{k}") for k in ks))
        .toArrow()
    )
    items = counts.column(ITEM_IDX).to_numpy(zero_copy_only=False).astype(np.int64)
    result = {}
    for k in ks:
        per_item = np.zeros(n_items + 1, dtype=np.int64)
        per_item[items] = counts.column(f"k{k}").to_numpy(zero_copy_only=False)
        result[k] = per_item
    return result
