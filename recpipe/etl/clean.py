"""Pure transforms of the clean stage: validate, normalise, de-duplicate, flag bots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.etl.sources import PARSE_ERROR
from recpipe.schema import (
    DUPLICATE_KEY,
    EPOCH_MS_THRESHOLD,
    EVENT_TYPE,
    EXTRA,
    ITEM_ID,
    RAW,
    REASON,
    SESSION_ID,
    SOURCE_FILE,
    TS,
    USER_ID,
    VALUE,
    Reason,
)

EVENT_COLUMNS: tuple[str, ...] = (
    USER_ID, ITEM_ID, EVENT_TYPE, TS, VALUE, SESSION_ID, EXTRA, SOURCE_FILE
)  # fmt: skip
QUARANTINE_COLUMNS: tuple[str, ...] = (RAW, REASON, SOURCE_FILE)
COPIES = "copies"

# Plain or exponent form (JSON floats such as 1.795e9 arrive that way from Spark's readers).
_NUMERIC = r"^[+-]?[0-9]{1,18}(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?$"
# ISO-8601 date-time with a mandatory zone: Z, +hh, +hhmm or +hh:mm.
_ISO_WITH_ZONE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
    r"(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$"
)


def ts_window(ds: dt.date, ts_min: dt.date, days_after_ds: int) -> tuple[dt.datetime, dt.datetime]:
    """Accepted event times ``[ts_min, end of ds + days_after_ds)`` as UTC datetimes."""
    lower = dt.datetime.combine(ts_min, dt.time(), dt.UTC)
    upper = dt.datetime.combine(ds + dt.timedelta(days=days_after_ds + 1), dt.time(), dt.UTC)
    return lower, upper


def _blank(col: Column) -> Column:
    return col.isNull() | (F.trim(col) == "")


def parse_ts(text: Column) -> tuple[Column, Column]:
    """(epoch seconds as double or null, parsed timestamp or null) of a raw ts string.

    Numbers (plain or with an exponent) are epoch seconds, or milliseconds at or above 1e11;
    they convert exactly to microseconds (decimal arithmetic, so ``1795000000.123456`` keeps
    its digits; null beyond the timestamp range). ISO-8601 needs an explicit zone.
    """
    trimmed = F.trim(text)
    is_numeric = trimmed.rlike(_NUMERIC)
    number = trimmed.try_cast(T.DoubleType())
    is_ms = F.abs(number) >= EPOCH_MS_THRESHOLD
    # 21 integer digits hold any value the regex allows short of a large exponent; those
    # overflow to null here and are judged by the double alone (out of the window).
    exact = trimmed.try_cast(T.DecimalType(30, 9))
    scale = F.when(is_ms, F.lit(1_000)).otherwise(F.lit(1_000_000))
    micros = F.round(F.try_multiply(exact, scale)).try_cast(T.LongType())
    numeric_seconds = F.when(is_ms, number / 1_000).otherwise(number)
    iso = F.when(trimmed.rlike(_ISO_WITH_ZONE), trimmed.try_cast(T.TimestampType()))
    seconds = F.when(is_numeric, numeric_seconds).otherwise(F.unix_micros(iso) / 1_000_000)
    timestamp = F.when(is_numeric, F.timestamp_micros(micros)).otherwise(iso)
    return seconds, timestamp


def classify(
    df: DataFrame,
    *,
    event_types: Sequence[str],
    value_required_for: Sequence[str],
    max_id_length: int,
    ts_min: dt.datetime,
    ts_max: dt.datetime,
) -> DataFrame:
    """Validate normalised raw rows; adds typed ``ts``/``value`` and ``reason`` (null = valid).

    Ids are trimmed, event types lower-cased. Each invalid row gets the first failing check,
    in the order of :class:`recpipe.schema.Reason`.
    """
    user = F.trim(F.col(USER_ID))
    item = F.trim(F.col(ITEM_ID))
    event = F.lower(F.trim(F.col(EVENT_TYPE)))
    seconds, timestamp = parse_ts(F.col(TS))
    lower_s = int(ts_min.timestamp())
    upper_s = int(ts_max.timestamp())
    value_text = F.trim(F.col(VALUE))
    value = F.when(value_text != "", value_text.try_cast(T.DoubleType()))
    finite = value.isNotNull() & ~F.isnan(value) & (F.abs(value) != float("inf"))

    reason = (
        F.when(F.col(PARSE_ERROR).isNotNull(), F.col(PARSE_ERROR))
        .when(_blank(F.col(USER_ID)), F.lit(Reason.MISSING_USER_ID))
        .when(_blank(F.col(ITEM_ID)), F.lit(Reason.MISSING_ITEM_ID))
        .when(_blank(F.col(EVENT_TYPE)), F.lit(Reason.MISSING_EVENT_TYPE))
        .when(_blank(F.col(TS)), F.lit(Reason.MISSING_TS))
        .when(
            (F.length(user) > max_id_length) | (F.length(item) > max_id_length),
            F.lit(Reason.ID_TOO_LONG),
        )
        .when(~event.isin(*event_types), F.lit(Reason.UNKNOWN_EVENT_TYPE))
        .when(seconds.isNull(), F.lit(Reason.BAD_TS))
        .when((seconds < lower_s) | (seconds >= upper_s), F.lit(Reason.TS_OUT_OF_WINDOW))
        .when(value_text.isNotNull() & (value_text != "") & ~finite, F.lit(Reason.BAD_VALUE))
        .when(event.isin(*value_required_for) & value.isNull(), F.lit(Reason.MISSING_VALUE))
    )
    session_id = F.trim(F.col(SESSION_ID))
    checked = df.select(
        F.col(RAW),
        reason.alias(REASON),
        user.alias(USER_ID),
        item.alias(ITEM_ID),
        event.alias(EVENT_TYPE),
        timestamp.alias("_ts"),
        value.alias("_value"),
        F.when(session_id != "", session_id).alias(SESSION_ID),
        F.col(EXTRA),
        F.col(SOURCE_FILE),
    )
    valid = F.col(REASON).isNull()
    return checked.select(
        *(F.col(c) for c in (RAW, REASON, USER_ID, ITEM_ID, EVENT_TYPE)),
        # Only valid rows carry typed values: invalid ones may hold absurd numbers.
        F.when(valid, F.col("_ts")).alias(TS),
        F.when(valid, F.col("_value")).alias(VALUE),
        *(F.col(c) for c in (SESSION_ID, EXTRA, SOURCE_FILE)),
    )


def dedupe_exact(
    valid: DataFrame,
    key: Sequence[str] = DUPLICATE_KEY,
    order_by: Sequence[str] = (SOURCE_FILE, RAW),
) -> DataFrame:
    """One row per distinct ``key`` plus ``copies`` (how many input rows it stood for).

    Of a group of duplicates the row smallest by ``order_by`` is kept, so the result does not
    depend on partitioning.
    """
    others = [c for c in valid.columns if c not in key]
    order = F.struct(*(F.col(c) for c in order_by))
    grouped = valid.groupBy(*key).agg(
        F.count(F.lit(1)).alias(COPIES),
        F.min_by(F.struct(*others), order).alias("_kept"),
    )
    return grouped.select(*key, COPIES, *(F.col(f"_kept.{c}").alias(c) for c in others))


def flag_bots(events: DataFrame, max_events_per_day: int) -> DataFrame:
    """Adds boolean ``is_bot``: the user has more than the limit of events on that UTC day."""
    per_day = Window.partitionBy(USER_ID, F.to_date(TS))
    return events.withColumn("is_bot", F.count(F.lit(1)).over(per_day) > max_events_per_day)
