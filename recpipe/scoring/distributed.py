"""Top-K for every user: the same block function on Spark executors or in one process.

:func:`recommend_block` turns a block of users (with their histories) into recommendation rows:
users the model can score get its top-K (``source`` = the model's name), the others the recent
popularity list minus their seen items (``source = 'popular'``). :func:`score_frame` runs it
with ``mapInArrow`` partition by partition, the model shipped once per executor as a
broadcast; :func:`score_locally` runs it in this process, block by block over the same input.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from recpipe.devices import pick_device
from recpipe.evaluation.ranking import PAD_ITEM
from recpipe.schema import (
    CANDIDATE_ITEMS,
    CANDIDATE_SCORES,
    ITEM_IDX,
    TRAINED,
    USER_IDX,
    USER_VECTOR,
)
from recpipe.scoring.histories import UserHistories
from recpipe.scoring.inputs import HISTORY_ITEMS, PopularList
from recpipe.scoring.scorers import DenseScorer, ModelPayload, Scorer, build_scorer

ScorerT = TypeVar("ScorerT")
SOURCE = "source"
SOURCE_POPULAR = "popular"
RANK = "rank"
SCORE = "score"
OUTPUT_SCHEMA = pa.schema(
    [
        (USER_IDX, pa.int32()),
        (ITEM_IDX, pa.int32()),
        (RANK, pa.int32()),
        (SCORE, pa.float64()),
        (SOURCE, pa.string()),
    ]
)
OUTPUT_DDL = f"{USER_IDX} int, {ITEM_IDX} int, {RANK} int, {SCORE} double, {SOURCE} string"


@dataclass(frozen=True)
class ScoreSettings:
    """How blocks are cut and where they run."""

    k: int
    user_block: int = 1024
    item_block: int = 16384
    device: str = "auto"
    dense_user_block: int | None = None  # users per block for scorers of full score rows

    def users_per_block(self, scorer: Scorer) -> int:
        """``user_block``, or fewer for a scorer of full rows (users x all items at once)."""
        if isinstance(scorer, DenseScorer) and self.dense_user_block is not None:
            return min(self.user_block, self.dense_user_block)
        return self.user_block


def _rows(users: np.ndarray, items: np.ndarray, scores: np.ndarray, source: str) -> pa.Table:
    keep = items != PAD_ITEM
    rows, ranks = np.nonzero(keep)
    return pa.table(
        [
            pa.array(users[rows], pa.int32()),
            pa.array(items[keep], pa.int32()),
            pa.array(ranks + 1, pa.int32()),
            pa.array(scores[keep], pa.float64()),
            pa.repeat(pa.scalar(source, pa.string()), len(rows)),
        ],
        schema=OUTPUT_SCHEMA,
    )


def popular_top_k(
    histories: UserHistories, popular: PopularList, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's first ``k`` popular items not in the user's history (score = users in the
    window), padded with item 0 when the list runs out."""
    items = np.zeros((len(histories), k), dtype=np.int64)
    scores = np.full((len(histories), k), -np.inf)
    for row in range(len(histories)):
        start = histories.offsets[row]
        seen = histories.items[start : start + histories.lengths[row]]
        # Only the first k + |seen| popular items can make the list.
        head = slice(0, k + len(seen))
        fresh = ~np.isin(popular.items[head], seen)
        chosen = popular.items[head][fresh][:k]
        items[row, : len(chosen)] = chosen
        scores[row, : len(chosen)] = popular.counts[head][fresh][:k]
    return items, scores


def recommend_block(
    scorer: Scorer, histories: UserHistories, popular: PopularList, settings: ScoreSettings
) -> pa.Table:
    """Recommendation rows for one block of users (model where it can score, else popular)."""
    scorable = scorer.can_score(histories)
    parts = []
    model_rows = np.flatnonzero(scorable)
    if len(model_rows):
        block = histories.take(model_rows)
        items, scores = scorer.top_k(block, settings.k, settings.item_block)
        parts.append(_rows(block.users, items, scores, scorer.name))
    cold_rows = np.flatnonzero(~scorable)
    if len(cold_rows):
        block = histories.take(cold_rows)
        items, scores = popular_top_k(block, popular, settings.k)
        parts.append(_rows(block.users, items, scores, SOURCE_POPULAR))
    return pa.concat_tables(parts) if parts else OUTPUT_SCHEMA.empty_table()


def user_blocks(histories: UserHistories, size: int) -> Iterator[UserHistories]:
    """Consecutive blocks of at most ``size`` users."""
    for start in range(0, len(histories), size):
        yield histories.take(np.arange(start, min(len(histories), start + size)))


def score_locally(
    payload: ModelPayload,
    histories: UserHistories,
    popular: PopularList,
    settings: ScoreSettings,
) -> pa.Table:
    """All users scored in this process (the single-process reference of :func:`score_frame`)."""
    scorer = build_scorer(payload, pick_device(settings.device, "score.device"))
    tables = [
        recommend_block(scorer, block, popular, settings)
        for block in user_blocks(histories, settings.users_per_block(scorer))
    ]
    return pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()


# One rebuilt model per executor Python process (Spark reuses workers across tasks), keyed by
# a token drawn on the driver per job.
_SCORERS: dict[str, Any] = {}


def cached_scorer(token: str, build: Callable[[], ScorerT]) -> ScorerT:
    """The scorer this Python worker built for job ``token``, built on first use (an earlier
    job's scorer is dropped)."""
    scorer = _SCORERS.get(token)
    if scorer is None:
        _SCORERS.clear()
        scorer = _SCORERS[token] = build()
    return scorer


def use_task_cores() -> None:
    """One torch thread per core of this Spark task: more would oversubscribe the node."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    torch.set_num_threads(max(1, context.cpus() if context else 1))


class PartitionScorer:
    """The ``mapInArrow`` function: Arrow batches of (user_idx, items) -> recommendation rows."""

    def __init__(self, payload: Any, popular: Any, settings: ScoreSettings) -> None:
        self.payload = payload  # Broadcast[ModelPayload]
        self.popular = popular  # Broadcast[PopularList]
        self.settings = settings
        self.token = uuid.uuid4().hex

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        use_task_cores()
        device = pick_device(self.settings.device, "score.device")
        scorer = cached_scorer(self.token, lambda: build_scorer(self.payload.value, device))
        popular = self.popular.value
        for batch in batches:
            histories = histories_from_arrow(batch)
            for block in user_blocks(histories, self.settings.users_per_block(scorer)):
                yield from recommend_block(scorer, block, popular, self.settings).to_batches()


def histories_from_arrow(batch: pa.RecordBatch) -> UserHistories:
    """A batch of ``(user_idx, items[, user_vector][, candidates][, trained])`` rows as
    :class:`UserHistories`."""
    lists = batch.column(HISTORY_ITEMS)
    lengths = lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    names = batch.schema.names
    vectors = vectors_from_arrow(batch.column(USER_VECTOR)) if USER_VECTOR in names else None
    candidates = None
    if CANDIDATE_ITEMS in names:
        candidates = (
            padded_lists(batch.column(CANDIDATE_ITEMS), np.int64),
            padded_lists(batch.column(CANDIDATE_SCORES), np.float64),
        )
    trained = None
    if TRAINED in names:
        trained = batch.column(TRAINED).fill_null(False).to_numpy(zero_copy_only=False)
    return UserHistories(
        batch.column(USER_IDX).to_numpy(zero_copy_only=False),
        lengths,
        lists.flatten().to_numpy(zero_copy_only=False),
        vectors,
        candidates,
        trained,
    )


def padded_lists(column: pa.Array, dtype: type) -> np.ndarray:
    """A list column as [rows, longest list] of ``dtype``, zero-padded (null lists: all 0)."""
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    out: np.ndarray = np.zeros((len(column), int(lengths.max()) if len(column) else 0), dtype=dtype)
    values = column.flatten().to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(column)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    out[rows, np.arange(len(values)) - np.repeat(starts, lengths)] = values
    return out


def vectors_from_arrow(column: pa.Array) -> np.ndarray:
    """A list<float> column as float32 [rows, d]; null lists (no vector) become NaN rows."""
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    width = int(lengths[present].max()) if present.any() else 0
    if present.any() and int(lengths[present].min()) != width:
        raise ValueError(f"{USER_VECTOR}: vectors of different lengths in one batch")
    out = np.full((len(column), width), np.nan, dtype=np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    out[present] = values.reshape(int(present.sum()), width)
    return out


def score_frame(
    spark: SparkSession,
    histories: DataFrame,
    payload: ModelPayload,
    popular: PopularList,
    settings: ScoreSettings,
    partitions: int | None = None,
) -> DataFrame:
    """Recommendation rows (``OUTPUT_DDL``) for every row of ``histories`` (user_idx, items),
    scored on the executors. The caller unpersists nothing: the result is lazy."""
    context = spark.sparkContext
    function = PartitionScorer(context.broadcast(payload), context.broadcast(popular), settings)
    spread = histories.repartition(partitions or context.defaultParallelism)
    return spread.mapInArrow(function, OUTPUT_DDL)
