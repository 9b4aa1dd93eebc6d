"""The ``sessionize`` stage: indexed events up to ``ds`` -> lake table ``sessions``."""

from __future__ import annotations

from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.etl.clean import COPIES, dedupe_exact
from recpipe.etl.sessionize import LENGTH, SESSION_COLUMNS, assign_sessions, build_sessions
from recpipe.lake import Lake
from recpipe.manifest import StageRun
from recpipe.reconcile import check_rows_per_ds
from recpipe.schema import (
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
from recpipe.stages.clean import EVENTS
from recpipe.stages.vocab import VOCAB_ITEMS, VOCAB_USERS

SESSIONS = "sessions"


class VocabMissingError(RecpipeError):
    """Events carry ids the vocabulary for ``ds`` does not know."""


def run_sessionize(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Build sessions for ``ds`` from the events partitions in the history window."""
    settings = config.sessionize
    lake = Lake(config.root)
    with StageRun(config, "sessionize", ds) as run:
        event_ds = lake.history(EVENTS, ds, settings.history_days)
        lake.require(VOCAB_USERS, ds, "vocab")
        run.record["events_ds"] = event_ds
        events = lake.read(spark, EVENTS, [{DS: v} for v in event_ds]).select(
            USER_ID, ITEM_ID, EVENT_TYPE, TS, VALUE, SESSION_ID, SOURCE_FILE, DS
        )
        check_rows_per_ds(events, EVENTS, event_ds, config.root, "clean")
        # The same event may arrive on two days; keep the earliest copy.
        distinct = dedupe_exact(events, DUPLICATE_KEY, order_by=(DS, SOURCE_FILE)).drop(DS)
        users = lake.read(spark, VOCAB_USERS, [{DS: ds}]).select(USER_ID, USER_IDX)
        items = lake.read(spark, VOCAB_ITEMS, [{DS: ds}]).select(ITEM_ID, ITEM_IDX)
        indexed = (
            distinct.join(users, USER_ID, "left").join(F.broadcast(items), ITEM_ID, "left")
        ).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            totals = indexed.agg(
                F.sum(COPIES).alias("rows_in"),
                F.count(F.lit(1)).alias("distinct"),
                F.sum(
                    F.when(F.col(USER_IDX).isNull() | F.col(ITEM_IDX).isNull(), 1).otherwise(0)
                ).alias("unknown"),
            ).first()
            if totals is None:
                raise RuntimeError(f"sessionize ds={ds}: the totals aggregate returned no row")
            if totals["unknown"]:
                raise VocabMissingError(
                    f"{totals['unknown']} events have ids missing from vocab ds={ds}: "
                    f"re-run `recpipe vocab --ds {ds}`"
                )
            keyed = assign_sessions(
                indexed.drop(COPIES),
                gap_seconds=settings.gap_minutes * 60,
                event_types=config.clean.event_types,
            )
            sessions = build_sessions(keyed, max_length=settings.max_session_length)
            part = lake.stage(
                sessions.select(*SESSION_COLUMNS),
                SESSIONS,
                {DS: ds},
                {"_config.yaml": config.to_yaml()},
            )
        finally:
            indexed.unpersist()
        written = part.read(spark)
        stats = written.agg(
            F.count(F.lit(1)).alias("sessions"),
            F.sum(LENGTH).alias("events"),
            F.count_distinct(USER_IDX).alias("users"),
            F.max(LENGTH).alias("max_length"),
        ).first()
        if stats is None:
            raise RuntimeError(f"sessionize ds={ds}: the sessions aggregate returned no row")
        rows_in, rows_distinct = totals["rows_in"] or 0, totals["distinct"]
        if (stats["events"] or 0) != rows_distinct:
            part.discard()
            raise RuntimeError(
                f"sessions hold {stats['events']} events but {rows_distinct} were read"
            )
        part.publish(run)
        run.record.update(
            rows_in=rows_in,
            rows_duplicate=rows_in - rows_distinct,
            rows_out=stats["sessions"],
            events_in_sessions=stats["events"] or 0,
            users=stats["users"],
            sessions=stats["sessions"],
            mean_session_length=round((stats["events"] or 0) / max(stats["sessions"], 1), 3),
            max_session_length=stats["max_length"],
        )
    return run.manifest
