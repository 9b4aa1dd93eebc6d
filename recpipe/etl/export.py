"""Training samples for the deep models, built per user from a train split.

Every sampler works on one row per user (the user's train items in time order) and draws its
random numbers from a generator seeded by ``(seed, user_idx)``, so the output does not depend
on how Spark partitions the users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recpipe.schema import (
    CONTEXT_IDX,
    HISTORY,
    HISTORY_TS,
    ITEM_IDX,
    LABEL,
    NEGATIVES,
    TS,
    USER_IDX,
    VALUE,
)

SEQ_ITEMS = "seq_items"
SEQ_TS = "seq_ts"
SEQ_VALUES = "seq_values"
SEQ_CONTEXT = "seq_context"  # array<array<int>>: each event's context indexes (when declared)

PAIRWISE_SCHEMA = f"{USER_IDX} int, {ITEM_IDX} int, {NEGATIVES} array<int>"
# ``value``: the positive's event value (a rating), NaN on sampled rows and where none was given.
POINTWISE_SCHEMA = f"{USER_IDX} int, {ITEM_IDX} int, {LABEL} float, {VALUE} float"
SEQUENCE_SCHEMA = (
    f"{USER_IDX} int, {HISTORY} array<int>, {HISTORY_TS} array<bigint>, {ITEM_IDX} int, "
    f"{TS} timestamp"
)

# Rounds of rejection sampling before giving up on users who interacted with almost everything.
_MAX_ROUNDS = 50


def user_sequences(
    train: DataFrame, *, user_col: str = USER_IDX, item_col: str = ITEM_IDX, ts_col: str = TS
) -> DataFrame:
    """One row per user: ``seq_items``, ``seq_ts`` (epoch s) and ``seq_values`` (the event
    values, NaN where absent) ordered by (ts, item); with a ``context_idx`` column in
    ``train``, ``seq_context`` too."""
    value = (
        F.coalesce(F.col(VALUE).cast("float"), F.lit(float("nan")))
        if VALUE in train.columns
        else F.lit(float("nan"))
    )
    context = [F.col(CONTEXT_IDX).alias("c")] if CONTEXT_IDX in train.columns else []
    ordered = F.array_sort(
        F.collect_list(
            F.struct(
                F.unix_seconds(ts_col).alias("t"),
                F.col(item_col).alias("i"),
                value.alias("v"),
                *context,
            )
        )
    )
    context_out = [F.col("pairs.c").alias(SEQ_CONTEXT)] if context else []
    return (
        train.groupBy(user_col)
        .agg(ordered.alias("pairs"))
        .select(
            F.col(user_col).cast("int").alias(USER_IDX),
            F.col("pairs.i").cast("array<int>").alias(SEQ_ITEMS),
            F.col("pairs.t").alias(SEQ_TS),
            F.col("pairs.v").cast("array<float>").alias(SEQ_VALUES),
            *context_out,
        )
    )


def _contexts(batch: pd.DataFrame) -> Iterator[np.ndarray | None]:
    """Each row's [events, C] context indexes (None per row without ``seq_context``)."""
    if SEQ_CONTEXT not in batch.columns:
        yield from (None for _ in range(len(batch)))
        return
    for events in batch[SEQ_CONTEXT]:
        yield np.stack([np.asarray(c, dtype=np.int32) for c in events])


def _context_column(parts: list[np.ndarray], width: int) -> list[pa.Array]:
    """The ``context_idx`` column of a batch ([] without context)."""
    if not width:
        return []
    return [_fixed_lists(np.concatenate(parts).reshape(-1), width, pa.int32())]


def _with_context(schema: str, width: int) -> str:
    return f"{schema}, {CONTEXT_IDX} array<int>" if width else schema


def _names(names: list[str], width: int) -> list[str]:
    return [*names, CONTEXT_IDX] if width else names


class NegativeSampler:
    """Draws items a user has not interacted with, uniformly or by train popularity.

    With ``trained`` ([n_items + 1] bool) only those items are drawn: an item without train
    interactions (one that occurs only in valid or test, e.g. every item of ``cold_items``'s
    test) is never a negative, so no model learns from the split that it is never chosen.
    """

    def __init__(
        self,
        n_items: int,
        weights: np.ndarray | None,
        seed: int,
        trained: np.ndarray | None = None,
    ) -> None:
        self.n_items = n_items
        self.seed = seed
        self.trained = None if trained is None else np.asarray(trained, dtype=bool).copy()
        if self.trained is not None:
            self.trained[0] = False
        self.pool_size = n_items if self.trained is None else int(self.trained.sum())
        self.cdf: np.ndarray | None = None
        if weights is not None:
            probs = np.asarray(weights, dtype=np.float64).copy()
            probs[0] = 0.0  # padding is never a negative
            if probs.sum() <= 0:
                raise ValueError("popularity sampling needs at least one item with a count")
            self.cdf = np.cumsum(probs / probs.sum())

    def draw(self, user: int, positives: np.ndarray, count: int) -> np.ndarray:
        """``count`` items (int32) outside ``positives``, reproducible for (seed, user)."""
        rng = np.random.default_rng([self.seed, int(user)])
        seen = np.unique(positives)
        if self._seen_in_pool(seen) >= self.pool_size:
            raise ValueError(f"user_idx {user} interacted with every item: no negatives exist")
        out = np.empty(count, dtype=np.int64)
        todo = np.arange(count)
        for _ in range(_MAX_ROUNDS):
            candidates = self._candidates(rng, len(todo))
            ok = ~np.isin(candidates, seen)
            if self.trained is not None:
                ok &= self.trained[candidates]
            out[todo[ok]] = candidates[ok]
            todo = todo[~ok]
            if not len(todo):
                return out.astype(np.int32)
        # Popularity sampling can starve when the user has every popular item: finish uniformly.
        pool = np.arange(1, self.n_items + 1)
        if self.trained is not None:
            pool = pool[self.trained[1:]]
        out[todo] = rng.choice(np.setdiff1d(pool, seen), size=len(todo))
        return out.astype(np.int32)

    def _seen_in_pool(self, seen: np.ndarray) -> int:
        """How many of the user's distinct items could be drawn (were it not for the user)."""
        if self.trained is None:
            return len(seen)
        inside = seen[(seen >= 1) & (seen <= self.n_items)]
        return int(self.trained[inside].sum())

    def _candidates(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.cdf is None:
            return rng.integers(1, self.n_items + 1, size=size)
        picks = np.searchsorted(self.cdf, rng.random(size), side="right")
        return np.minimum(picks, self.n_items)


def _users_and_sequences(
    batch: pd.DataFrame, since: int | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
    """(user, items, epoch seconds, first recent position) per row of a sequences batch.

    The first recent position is where the interactions at or after ``since`` begin (0 when
    ``since`` is None: every interaction counts); sequences are in time order.
    """
    for user, items, ts in zip(batch[USER_IDX], batch[SEQ_ITEMS], batch[SEQ_TS], strict=True):
        times = np.asarray(ts, dtype=np.int64)
        first = 0 if since is None else int(np.searchsorted(times, since, side="left"))
        yield int(user), np.asarray(items, dtype=np.int64), times, first


def pairwise_samples(
    sequences: DataFrame,
    sampler: NegativeSampler,
    negatives: int,
    since: int | None = None,
    context_width: int = 0,
) -> DataFrame:
    """(user, positive, N negatives) per train interaction (at or after ``since``, if given),
    with the positive's context when ``context_width`` > 0.

    Negatives avoid every train item of the user, recent or not.
    """

    def build(batches: Iterator[pd.DataFrame]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            users, items, negs, contexts = [], [], [], []
            rows = zip(_users_and_sequences(batch, since), _contexts(batch), strict=True)
            for (user, seq, _, first), context in rows:
                positives = seq[first:]
                if not len(positives):
                    continue
                users.append(np.full(len(positives), user, dtype=np.int32))
                items.append(positives.astype(np.int32))
                negs.append(sampler.draw(user, seq, len(positives) * negatives))
                if context is not None:
                    contexts.append(context[first:])
            if not users:
                continue
            flat = np.concatenate(negs)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(np.concatenate(users)),
                    pa.array(np.concatenate(items)),
                    pa.FixedSizeListArray.from_arrays(pa.array(flat), negatives).cast(
                        pa.list_(pa.int32())
                    ),
                    *_context_column(contexts, context_width),
                ],
                names=_names([USER_IDX, ITEM_IDX, NEGATIVES], context_width),
            )

    return _map_pandas_to_arrow(sequences, build, _with_context(PAIRWISE_SCHEMA, context_width))


def pointwise_samples(
    sequences: DataFrame,
    sampler: NegativeSampler,
    negatives: int,
    since: int | None = None,
    context_width: int = 0,
) -> DataFrame:
    """Each train interaction (at or after ``since``, if given) as a label-1 row carrying its
    value, plus N label-0 rows of sampled items (value NaN). With ``context_width`` > 0 every
    row carries the interaction's context: a sampled row, that of the interaction it was
    drawn for (what the user did not pick in that moment)."""

    def build(batches: Iterator[pd.DataFrame]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            users, items, labels, values, contexts = [], [], [], [], []
            rows = zip(
                _users_and_sequences(batch, since), batch[SEQ_VALUES], _contexts(batch),
                strict=True,
            )  # fmt: skip
            for (user, seq, _, first), seq_values, context in rows:
                positives = seq[first:]
                if not len(positives):
                    continue
                sampled = sampler.draw(user, seq, len(positives) * negatives)
                both = np.concatenate([positives.astype(np.int32), sampled])
                users.append(np.full(len(both), user, dtype=np.int32))
                items.append(both)
                label = np.zeros(len(both), np.float32)
                label[: len(positives)] = 1.0
                labels.append(label)
                value = np.full(len(both), np.nan, np.float32)
                value[: len(positives)] = np.asarray(seq_values, dtype=np.float32)[first:]
                values.append(value)
                if context is not None:  # sampled row j was drawn for positive j // N
                    own = context[first:]
                    contexts.append(np.concatenate([own, np.repeat(own, negatives, axis=0)]))
            if not users:
                continue
            yield pa.RecordBatch.from_arrays(
                [
                    *(pa.array(np.concatenate(a)) for a in (users, items, labels, values)),
                    *_context_column(contexts, context_width),
                ],
                names=_names([USER_IDX, ITEM_IDX, LABEL, VALUE], context_width),
            )

    return _map_pandas_to_arrow(sequences, build, _with_context(POINTWISE_SCHEMA, context_width))


def window_ends(length: int, stride: int) -> np.ndarray:
    """Target positions of a user's windows, last first: ``length-1, length-1-stride, ...``.

    With ``stride`` equal to the history length and a loss on every position, each item after
    the first is a target exactly once per epoch.
    """
    return np.arange(length - 1, 0, -stride, dtype=np.int64)


def sequence_samples(
    sequences: DataFrame,
    max_len: int,
    stride: int,
    since: int | None = None,
    context_width: int = 0,
) -> DataFrame:
    """(user, left-padded history of up to ``max_len`` items, target) windows per user, with
    the target's context when ``context_width`` > 0.

    With ``since``, only the windows whose target is at or after it (histories still reach
    back before it).
    """

    def build(batches: Iterator[pd.DataFrame]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            users, history, history_ts, targets, target_ts = [], [], [], [], []
            contexts: list[np.ndarray] = []
            rows = zip(_users_and_sequences(batch, since), _contexts(batch), strict=True)
            for (user, seq, ts, first), context in rows:
                ends = window_ends(len(seq), stride)
                ends = ends[ends >= first]
                if not len(ends):
                    continue
                # Pad on the left so index arithmetic gives every window a fixed-size slice.
                padded = np.concatenate([np.zeros(max_len, np.int64), seq])
                padded_ts = np.concatenate([np.zeros(max_len, np.int64), ts])
                starts = ends  # in padded coordinates the history of target t is [t, t+L)
                index = starts[:, None] + np.arange(max_len)[None, :]
                users.append(np.full(len(ends), user, dtype=np.int32))
                history.append(padded[index].astype(np.int32))
                history_ts.append(padded_ts[index])
                targets.append(seq[ends].astype(np.int32))
                target_ts.append(ts[ends])
                if context is not None:
                    contexts.append(context[ends])
            if not users:
                continue
            hist = np.concatenate(history)
            hist_ts = np.concatenate(history_ts)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(np.concatenate(users)),
                    _fixed_lists(hist.reshape(-1), max_len, pa.int32()),
                    _fixed_lists(hist_ts.reshape(-1), max_len, pa.int64()),
                    pa.array(np.concatenate(targets)),
                    pa.array(np.concatenate(target_ts) * 1_000_000, pa.timestamp("us", "UTC")),
                    *_context_column(contexts, context_width),
                ],
                names=_names([USER_IDX, HISTORY, HISTORY_TS, ITEM_IDX, TS], context_width),
            )

    return _map_pandas_to_arrow(sequences, build, _with_context(SEQUENCE_SCHEMA, context_width))


def _fixed_lists(values: np.ndarray, size: int, kind: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values, kind), size).cast(pa.list_(kind))


Builder = Callable[[Iterator[pd.DataFrame]], Iterator[pa.RecordBatch]]


def _map_pandas_to_arrow(sequences: DataFrame, build: Builder, schema: str) -> DataFrame:
    """Run ``build`` (pandas batches in, Arrow record batches out) over every partition."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return build(batch.to_pandas() for batch in batches)

    return sequences.mapInArrow(run, schema)
