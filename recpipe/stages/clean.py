"""The ``clean`` stage: raw logs -> lake tables ``events`` and ``quarantine`` for one ``ds``.

:func:`run_clean` runs these steps in one lake transaction:

1. :func:`classify_raw`: read the raw input, give each record its quarantine reason (null when
   valid);
2. :func:`parse_once`: write that once to a scratch Parquet copy and count it by reason;
3. :func:`dedupe_valid`: collapse exact duplicates among the valid records;
4. :func:`route_bots`: split off bot suspects; the rest are the events, the rejected rows the
   quarantine; both are staged;
5. :func:`staged_counts` and :func:`mismatch`: reconcile what was staged with the counts of 2
   and 3 (``rows_in = rows_out + quarantined + duplicates``);
6. :func:`refuse_empty_replacement`: never publish an empty day over a non-empty one unless
   allowed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.etl.clean import (
    COPIES,
    EVENT_COLUMNS,
    KEY_HASH,
    QUARANTINE_COLUMNS,
    Deduped,
    classify,
    dedupe_repeated,
    flag_bots,
    key_hash,
    ts_window,
)
from recpipe.etl.sources import raw_read_errors, read_raw_events
from recpipe.lake import Lake, StagedPartition, transaction
from recpipe.layout import EVENTS, QUARANTINE
from recpipe.manifest import CleanManifest
from recpipe.reconcile import ReconciliationError
from recpipe.schema import DS, RAW, REASON, SOURCE_FILE, Reason
from recpipe.spark import one_row
from recpipe.storage import Location
from recpipe.sweep import scratch_folder

log = logging.getLogger(__name__)

RAW_HASH = "raw_hash"


class EmptyReplacementError(RecpipeError):
    """An input without valid events would replace a non-empty events partition."""


@dataclass
class CleanCounts:
    """What one run read: records per quarantine reason (``None``: valid), distinct events."""

    by_reason: dict[str | None, int]
    rows_distinct: int = 0
    rows_copies: int = 0  # valid records behind the distinct events

    @property
    def rows_in(self) -> int:
        """Records read."""
        return sum(self.by_reason.values())

    @property
    def rows_valid(self) -> int:
        """Records that passed every check, duplicates included."""
        return self.by_reason.get(None, 0)

    @property
    def rows_invalid(self) -> dict[str, int]:
        """Records rejected by the checks, by reason."""
        return {k: v for k, v in self.by_reason.items() if k is not None}

    @property
    def rows_duplicate(self) -> int:
        """Valid records dropped as exact copies of another."""
        return self.rows_copies - self.rows_distinct


def run_clean(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Clean the raw events at ``paths.raw_events`` into partition ``ds``; returns the manifest."""
    settings = config.clean
    bots = settings.bot_max_events_per_day is not None
    with transaction(config, "clean", ds, CleanManifest()) as tx:
        ts_min, ts_max = ts_window(
            dt.date.fromisoformat(ds), settings.ts_min, settings.ts_max_days_after_ds
        )
        tx.record.input = config.paths.raw_events
        tx.record.ts_window = [ts_min.isoformat(), ts_max.isoformat()]
        checked = classify_raw(spark, config, ts_min, ts_max)
        started = time.perf_counter()
        with scratch_folder(config.root, "clean", ds) as scratch:
            parsed, counts = parse_once(spark, checked, scratch, started)
            deduped = dedupe_valid(parsed, counts, started)
            try:
                events, quarantine = route_bots(
                    deduped.rows, parsed, settings.bot_max_events_per_day
                )
                staged_events = tx.stage(events.select(*EVENT_COLUMNS), EVENTS)
                staged_quarantine = tx.stage(quarantine, QUARANTINE)
            finally:
                deduped.release()
        log.info("clean: staged events and quarantine (%.1fs)", time.perf_counter() - started)
        rows_out, quarantined = staged_counts(spark, staged_events, staged_quarantine)
        tx.reconcile(mismatch(counts, rows_out, quarantined, bots), ReconciliationError)
        refuse_empty_replacement(spark, tx.lake, ds, rows_out, settings.allow_empty)
        tx.record.rows_in = counts.rows_in
        tx.record.rows_out = rows_out
        tx.record.rows_quarantined = sum(quarantined.values())
        tx.record.rows_duplicate = counts.rows_duplicate
        tx.record.quarantine_by_reason = {
            r: quarantined.get(r, 0) for r in Reason.ALL if quarantined.get(r)
        }
    return tx.manifest


def classify_raw(
    spark: SparkSession, config: Config, ts_min: dt.datetime, ts_max: dt.datetime
) -> DataFrame:
    """Raw records with their quarantine ``reason`` (null when valid) and a hash of the raw text.

    The raw text itself is kept only where the record may still be quarantined.
    """
    settings = config.clean
    raw = read_raw_events(spark, config.paths.raw_events, settings.input_format)
    checked = classify(
        raw,
        event_types=settings.event_types,
        value_required_for=settings.value_required_for,
        max_id_length=settings.max_id_length,
        ts_min=ts_min,
        ts_max=ts_max,
    )
    # Valid rows only need the raw text if the bot filter may quarantine them; dropping it
    # keeps the scratch copy small. Its hash still orders duplicates deterministically.
    keep_raw = F.lit(settings.bot_max_events_per_day is not None) | F.col(REASON).isNotNull()
    return checked.select(
        *(F.when(keep_raw, F.col(c)).alias(c) if c == RAW else F.col(c) for c in checked.columns),
        F.xxhash64(RAW).alias(RAW_HASH),
        # Computed here, in the one parsing pass, so de-duplication reads one column to find
        # the keys that repeat.
        F.when(F.col(REASON).isNull(), key_hash()).alias(KEY_HASH),
    )


def parse_once(
    spark: SparkSession, checked: DataFrame, scratch: Location, started: float
) -> tuple[DataFrame, CleanCounts]:
    """Write ``checked`` once to ``scratch`` and read it back; count its records by reason.

    Later passes read only the columns they need from the copy, several times cheaper than
    Spark's in-memory cache of the rows. This is the first pass over the raw files: a file that
    cannot be read (a cut gzip) fails here, as one line naming it, before anything is staged.
    """
    with raw_read_errors(spark):
        checked.write.parquet(scratch.uri)
    parsed = spark.read.parquet(scratch.uri)
    counts = CleanCounts(
        {row[REASON]: row["count"] for row in parsed.groupBy(REASON).count().collect()}
    )
    log.info(
        "clean: parsed %d records, %d valid before de-duplication (%.1fs)",
        counts.rows_in,
        counts.rows_valid,
        time.perf_counter() - started,
    )
    return parsed, counts


def dedupe_valid(parsed: DataFrame, counts: CleanCounts, started: float) -> Deduped:
    """The distinct valid events (:func:`dedupe_repeated`; the caller releases them); fills
    ``counts``.

    Rows whose key hash is unique pass through; of the grouped rest, ``counts`` takes the
    groups and the records behind them, so ``rows_copies`` equals the independently counted
    valid records only if the grouping lost and invented nothing.
    """
    valid = parsed.where(F.col(REASON).isNull()).drop(REASON)
    deduped = dedupe_repeated(valid, order_by=(SOURCE_FILE, RAW_HASH))
    totals = one_row(
        deduped.grouped.agg(F.count(F.lit(1)).alias("n"), F.sum(COPIES).alias("copies")),
        "clean duplicates",
    )
    singles = counts.rows_valid - deduped.grouped_input_rows
    counts.rows_distinct = singles + totals["n"]
    counts.rows_copies = singles + (totals["copies"] or 0)
    log.info(
        "clean: %d distinct events, %d exact duplicates, %d rows grouped (%.1fs)",
        counts.rows_distinct,
        counts.rows_duplicate,
        deduped.grouped_input_rows,
        time.perf_counter() - started,
    )
    return deduped


def route_bots(
    distinct: DataFrame, parsed: DataFrame, bot_limit: int | None
) -> tuple[DataFrame, DataFrame]:
    """(events, quarantine): bot suspects (with ``bot_limit``) join the rejected records."""
    quarantine = parsed.where(F.col(REASON).isNotNull()).select(*QUARANTINE_COLUMNS)
    if bot_limit is None:
        return distinct, quarantine
    flagged = flag_bots(distinct, bot_limit)
    bots = flagged.where("is_bot").select(
        F.col(RAW), F.lit(Reason.BOT_SUSPECT).alias(REASON), F.col(SOURCE_FILE)
    )
    return flagged.where("NOT is_bot"), quarantine.unionByName(bots)


def staged_counts(
    spark: SparkSession, events: StagedPartition, quarantine: StagedPartition
) -> tuple[int, dict[str, int]]:
    """Rows of the staged events, and of the staged quarantine by reason, read from disk."""
    rows_out = events.count(spark)
    quarantined = {
        row[REASON]: row["count"]
        for row in quarantine.read(spark).groupBy(REASON).count().collect()
    }
    return rows_out, quarantined


def mismatch(
    counts: CleanCounts, rows_out: int, quarantined: dict[str, int], bots: bool
) -> str | None:
    """What does not add up between the staged rows and the rows read (None when all does)."""
    rows_quarantined = sum(quarantined.values())
    expected_quarantine = counts.rows_invalid
    if bots:
        expected_quarantine[Reason.BOT_SUSPECT] = counts.rows_distinct - rows_out
    problems = []
    if counts.rows_in != rows_out + rows_quarantined + counts.rows_duplicate:
        problems.append(
            f"rows_in {counts.rows_in} != rows_out {rows_out} + quarantined {rows_quarantined}"
            f" + duplicates {counts.rows_duplicate}"
        )
    if counts.rows_copies != counts.rows_valid:
        problems.append(
            f"valid rows {counts.rows_valid} != rows behind distinct events {counts.rows_copies}"
        )
    if {k: v for k, v in quarantined.items() if v} != {
        k: v for k, v in expected_quarantine.items() if v
    }:
        problems.append(f"quarantine by reason {quarantined} != expected {expected_quarantine}")
    return "clean did not reconcile: " + "; ".join(problems) if problems else None


def refuse_empty_replacement(
    spark: SparkSession, lake: Lake, ds: str, rows_out: int, allow_empty: bool
) -> None:
    """Fail when a day without valid events would replace a non-empty events day."""
    if rows_out or allow_empty or not lake.exists(EVENTS, {DS: ds}):
        return
    previous = lake.read(spark, EVENTS, [{DS: ds}]).count()
    if previous:
        raise EmptyReplacementError(
            f"clean ds={ds}: the input holds no valid event, and events ds={ds} has "
            f"{previous} rows; nothing was replaced (pass --allow-empty, or set "
            "clean.allow_empty=true, to publish an empty day over them)"
        )
