"""Pure transforms of the clean stage: validate, normalise, de-duplicate, flag bots."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

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


KEY_HASH = "key_hash"
# Above this many repeated key hashes the duplicates are grouped with every other row (one
# shuffle of all rows) instead of joined against a broadcast set of the repeated hashes.
MAX_BROADCAST_REPEATS = 1_000_000


def key_hash(key: Sequence[str] = DUPLICATE_KEY) -> Column:
    """64-bit hash of a row's duplicate key: rows with equal keys have equal hashes."""
    return F.xxhash64(*(F.col(c) for c in key))


@dataclass
class Deduped:
    """Distinct rows; the grouped part (one row per key that went through grouping, with its
    ``copies``) and how many input rows went into it (counted apart, for reconciliation)."""

    rows: DataFrame
    grouped: DataFrame
    grouped_input_rows: int
    _cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Drop what :func:`dedupe_repeated` persisted."""
        for frame in self._cached:
            frame.unpersist()


def dedupe_repeated(
    rows: DataFrame,
    key: Sequence[str] = DUPLICATE_KEY,
    order_by: Sequence[str] = (SOURCE_FILE, RAW),
    max_broadcast: int = MAX_BROADCAST_REPEATS,
) -> Deduped:
    """:func:`dedupe_exact`'s rows, grouping only the rows whose key hash repeats.

    Most keys occur once: a row whose ``key_hash`` (a column of ``rows``, else computed) is
    unique is already distinct (``copies`` 1), so only rows sharing a hash (true duplicates and
    rare collisions, told apart by grouping on the key itself) pay the shuffle and the
    deterministic choice. With more than ``max_broadcast`` repeated hashes every row is
    grouped, as :func:`dedupe_exact` does. The caller calls :meth:`Deduped.release`.
    """
    hashed = rows if KEY_HASH in rows.columns else rows.withColumn(KEY_HASH, key_hash(key))
    repeated = hashed.groupBy(KEY_HASH).count().where(F.col("count") > 1).persist()
    stats = repeated.agg(F.count(F.lit(1)).alias("hashes"), F.sum("count").alias("rows"))
    totals = stats.collect()[0]
    if totals["hashes"] > max_broadcast:
        repeated.unpersist()
        everything = dedupe_exact(hashed.drop(KEY_HASH), key, order_by).persist()
        return Deduped(everything, everything, hashed.count(), [everything])
    few = F.broadcast(repeated.select(KEY_HASH))
    others = [c for c in hashed.columns if c not in key and c != KEY_HASH]
    single = hashed.join(few, KEY_HASH, "left_anti").select(
        *key, F.lit(1).cast(T.LongType()).alias(COPIES), *others
    )
    shared = hashed.join(few, KEY_HASH, "left_semi").drop(KEY_HASH)
    grouped = dedupe_exact(shared, key, order_by).persist()
    return Deduped(single.unionByName(grouped), grouped, int(totals["rows"] or 0),
                   [repeated, grouped])  # fmt: skip


def flag_bots(events: DataFrame, max_events_per_day: int) -> DataFrame:
    """Adds boolean ``is_bot``: the user has more than the limit of events on that UTC day."""
    per_day = Window.partitionBy(USER_ID, F.to_date(TS))
    return events.withColumn("is_bot", F.count(F.lit(1)).over(per_day) > max_events_per_day)
