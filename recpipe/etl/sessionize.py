"""Sessions per user: explicit ``session_id`` when present, otherwise an inactivity gap."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recpipe.schema import (
    CONTEXT,
    EVENT_TYPE,
    EXTRA,
    ITEM_ID,
    ITEM_IDX,
    SESSION_ID,
    TS,
    USER_ID,
    USER_IDX,
    VALUE,
)

TS_MS = "ts_ms"
EVENT_RANK = "event_rank"
START_TS = "start_ts"
END_TS = "end_ts"
LENGTH = "length"
SESSION_COLUMNS: tuple[str, ...] = (
    USER_ID, USER_IDX, SESSION_ID, START_TS, END_TS, LENGTH,
    ITEM_IDX, ITEM_ID, EVENT_TYPE, TS_MS, VALUE, CONTEXT,
)  # fmt: skip
# Per-event columns of a session, in its arrays' order.
_EVENT_COLUMNS = (ITEM_IDX, ITEM_ID, EVENT_TYPE, TS_MS, VALUE, CONTEXT)
AUTO_PREFIX = "auto-"


def event_rank(event_types: Sequence[str]) -> Column:
    """Position of the event type in the configured list: orders same-second events by funnel."""
    rank = F.lit(len(event_types))
    for position, name in reversed(list(enumerate(event_types))):
        rank = F.when(F.col(EVENT_TYPE) == name, F.lit(position)).otherwise(rank)
    return rank


def assign_sessions(
    events: DataFrame, *, gap_seconds: float, event_types: Sequence[str]
) -> DataFrame:
    """Adds ``session_key`` to indexed events.

    Events with an input ``session_id`` keep it. Events without one are ordered per user by
    (ts, event type, item) and a gap above ``gap_seconds`` starts a new session, keyed
    ``auto-<first event epoch ms>`` so the key does not depend on earlier history.
    """
    prepared = events.withColumn(TS_MS, F.unix_millis(TS)).withColumn(
        EVENT_RANK, event_rank(event_types)
    )
    given = prepared.where(F.col(SESSION_ID).isNotNull()).withColumn(
        "session_key", F.col(SESSION_ID)
    )
    order = Window.partitionBy(USER_ID).orderBy(TS_MS, EVENT_RANK, ITEM_ID)
    gap_ms = int(gap_seconds * 1000)
    auto = prepared.where(F.col(SESSION_ID).isNull())
    previous = F.lag(TS_MS).over(order)
    auto = auto.withColumn(
        "_new", F.when(previous.isNull() | (F.col(TS_MS) - previous > gap_ms), 1).otherwise(0)
    )
    auto = auto.withColumn(
        "_n", F.sum("_new").over(order.rowsBetween(Window.unboundedPreceding, 0))
    )
    auto = auto.withColumn(
        "session_key",
        F.concat(
            F.lit(AUTO_PREFIX),
            F.min(TS_MS).over(Window.partitionBy(USER_ID, "_n")).cast("string"),
        ),
    ).drop("_new", "_n")
    return given.unionByName(auto)


def build_sessions(keyed: DataFrame, *, max_length: int | None) -> DataFrame:
    """One row per session with time-ordered arrays; sessions over ``max_length`` are chunked.

    A chunked session keeps every event: chunk ``k`` > 0 gets the id ``<session>~<k>``.
    """
    order = F.struct(TS_MS, EVENT_RANK, ITEM_ID, ITEM_IDX, EVENT_TYPE, VALUE)
    entry = F.struct(order.alias("_order"), *_EVENT_COLUMNS)

    def earlier(left: Column, right: Column) -> Column:
        # A map (the context) cannot be ordered: compare the ordering fields only.
        first, second = left["_order"], right["_order"]
        return F.when(first < second, -1).when(first > second, 1).otherwise(0)

    grouped = keyed.groupBy(USER_ID, USER_IDX, "session_key").agg(
        F.array_sort(F.collect_list(entry), earlier).alias("_events")
    )
    if max_length is not None:
        n_chunks = F.ceil(F.size("_events") / max_length).cast("int")
        chunks = F.transform(
            F.sequence(F.lit(0), n_chunks - 1),
            lambda k: F.struct(
                k.alias("chunk"), F.slice("_events", k * max_length + 1, max_length).alias("part")
            ),
        )
        grouped = grouped.select(
            USER_ID, USER_IDX, "session_key", F.explode(chunks).alias("_chunk")
        ).select(
            USER_ID,
            USER_IDX,
            F.when(F.col("_chunk.chunk") == 0, F.col("session_key"))
            .otherwise(F.concat_ws("~", "session_key", F.col("_chunk.chunk").cast("string")))
            .alias("session_key"),
            F.col("_chunk.part").alias("_events"),
        )
    return grouped.select(
        USER_ID,
        USER_IDX,
        F.col("session_key").alias(SESSION_ID),
        F.timestamp_millis(F.col("_events")[0][TS_MS]).alias(START_TS),
        F.timestamp_millis(F.element_at("_events", -1)[TS_MS]).alias(END_TS),
        F.size("_events").alias(LENGTH),
        *(F.col(f"_events.{c}").alias(c) for c in _EVENT_COLUMNS),
    )


def explode_sessions(sessions: DataFrame) -> DataFrame:
    """Back from sessions to one row per interaction (with ``TS_MS``), the inverse of grouping.

    Sessions written before events kept their context get an empty ``context`` per event.
    """
    if CONTEXT not in sessions.columns:
        empty = F.transform(ITEM_IDX, lambda _: empty_context())
        sessions = sessions.withColumn(CONTEXT, empty)
    zipped = F.arrays_zip(*_EVENT_COLUMNS)
    return sessions.select(USER_ID, USER_IDX, SESSION_ID, F.explode(zipped).alias("_e")).select(
        USER_ID,
        USER_IDX,
        *(F.col(f"_e.{c}").alias(c) for c in _EVENT_COLUMNS),
        SESSION_ID,
    )


def empty_context() -> Column:
    """An empty context map."""
    return F.create_map().cast("map<string,string>")


def event_context(fields: Sequence[str]) -> Column:
    """The event's ``extra`` entries named in ``fields`` (the declared context), never null."""
    wanted = sorted(set(fields))
    if not wanted:
        return empty_context()
    kept = F.map_filter(F.col(EXTRA), lambda key, _: key.isin(wanted))
    return F.coalesce(kept, empty_context())
