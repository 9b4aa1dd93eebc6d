"""The ``sessionize`` stage: indexed events up to ``ds`` -> lake table ``sessions``."""

from __future__ import annotations

from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.etl.clean import COPIES, Deduped, dedupe_repeated
from recpipe.etl.sessionize import (
    LENGTH,
    SESSION_COLUMNS,
    assign_sessions,
    build_sessions,
    event_context,
)
from recpipe.feature_specs import context_event_fields
from recpipe.lake import Lake, StagedPartition, transaction
from recpipe.layout import EVENTS, SESSIONS, VOCAB_ITEMS, VOCAB_USERS
from recpipe.manifest import SessionizeManifest
from recpipe.reconcile import check_rows_per_ds
from recpipe.schema import (
    CONTEXT,
    DS,
    DUPLICATE_KEY,
    EVENT_TYPE,
    ITEM_ID,
    ITEM_IDX,
    SESSION_ID,
    SOURCE_FILE,
    TS,
    USER_ID,
    USER_IDX,
    VALUE,
)
from recpipe.spark import one_row
from recpipe.task_memory import check_shuffle_fits


class VocabMissingError(RecpipeError):
    """Events carry ids the vocabulary for ``ds`` does not know."""


def run_sessionize(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Build sessions for ``ds`` from the events partitions in the history window."""
    settings = config.sessionize
    with transaction(config, "sessionize", ds, SessionizeManifest()) as tx:
        event_ds = tx.lake.history(EVENTS, ds, settings.history_days)
        tx.lake.require(VOCAB_USERS, ds, "vocab")
        tx.record.events_ds = event_ds
        indexed, deduped = indexed_events(spark, config, tx.lake, ds, event_ds)
        try:
            totals = count_indexed(indexed, ds)
            deduped.release()  # indexed is persisted and counted: the parts are not needed
            keyed = assign_sessions(
                indexed.drop(COPIES),
                gap_seconds=settings.gap_minutes * 60,
                event_types=config.clean.event_types,
            )
            sessions = build_sessions(keyed, max_length=settings.max_session_length)
            part = tx.stage(sessions.select(*SESSION_COLUMNS), SESSIONS)
        finally:
            deduped.release()
            indexed.unpersist()
        stats = session_stats(spark, part)
        rows_in, rows_distinct = totals["rows_in"] or 0, totals["distinct"]
        events = stats["events"] or 0
        tx.reconcile(
            None
            if events == rows_distinct
            else f"sessions hold {stats['events']} events but {rows_distinct} were read",
            RuntimeError,
        )
        tx.record.rows_in = rows_in
        tx.record.rows_duplicate = rows_in - rows_distinct
        tx.record.rows_out = stats["sessions"]
        tx.record.events_in_sessions = events
        tx.record.users = stats["users"]
        tx.record.sessions = stats["sessions"]
        tx.record.mean_session_length = round(events / max(stats["sessions"], 1), 3)
        tx.record.max_session_length = stats["max_length"]
    return tx.manifest


def indexed_events(
    spark: SparkSession, config: Config, lake: Lake, ds: str, event_ds: list[str]
) -> tuple[DataFrame, Deduped]:
    """Distinct events of the ``event_ds`` days with their user and item indexes (persisted),
    and the de-duplication's parts (the caller releases them once the events are counted).

    Each day's rows are reconciled with what ``clean`` published; the same event arriving on
    two days keeps its earliest copy (only keys whose hash repeats are grouped). Unknown ids
    get null indexes (see :func:`count_indexed`).
    """
    fields = context_event_fields(config.features.context)
    events = lake.read(spark, EVENTS, [{DS: v} for v in event_ds]).select(
        USER_ID, ITEM_ID, EVENT_TYPE, TS, VALUE, SESSION_ID, SOURCE_FILE, DS,
        event_context(fields).alias(CONTEXT),
    )  # fmt: skip
    counts = check_rows_per_ds(events, EVENTS, event_ds, config.root, "clean")
    check_shuffle_fits(spark, "sessionize", sum(counts.values()))
    deduped = dedupe_repeated(events, DUPLICATE_KEY, order_by=(DS, SOURCE_FILE))
    distinct = deduped.rows.drop(DS)
    users = lake.read(spark, VOCAB_USERS, [{DS: ds}]).select(USER_ID, USER_IDX)
    items = lake.read(spark, VOCAB_ITEMS, [{DS: ds}]).select(ITEM_ID, ITEM_IDX)
    indexed = distinct.join(users, USER_ID, "left").join(F.broadcast(items), ITEM_ID, "left")
    return indexed.persist(StorageLevel.MEMORY_AND_DISK), deduped


def count_indexed(indexed: DataFrame, ds: str) -> Row:
    """Rows read (``rows_in``), distinct events (``distinct``); fails on ids the vocab lacks."""
    unknown = F.col(USER_IDX).isNull() | F.col(ITEM_IDX).isNull()
    totals = one_row(
        indexed.agg(
            F.sum(COPIES).alias("rows_in"),
            F.count(F.lit(1)).alias("distinct"),
            F.sum(F.when(unknown, 1).otherwise(0)).alias("unknown"),
        ),
        f"sessionize ds={ds} totals",
    )
    if totals["unknown"]:
        raise VocabMissingError(
            f"{totals['unknown']} events have ids missing from vocab ds={ds}: "
            f"re-run `recpipe vocab --ds {ds}`"
        )
    return totals


def session_stats(spark: SparkSession, part: StagedPartition) -> Row:
    """Sessions, events in them, users and the longest session, read from the staged files."""
    return one_row(
        part.read(spark).agg(
            F.count(F.lit(1)).alias("sessions"),
            F.sum(LENGTH).alias("events"),
            F.count_distinct(USER_IDX).alias("users"),
            F.max(LENGTH).alias("max_length"),
        ),
        "sessions",
    )
