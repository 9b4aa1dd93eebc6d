"""The ``clean`` stage: raw logs -> lake tables ``events`` and ``quarantine`` for one ``ds``."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
import uuid
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.etl.clean import (
    COPIES,
    EVENT_COLUMNS,
    QUARANTINE_COLUMNS,
    classify,
    dedupe_exact,
    flag_bots,
    ts_window,
)
from recpipe.etl.sources import raw_read_errors, read_raw_events
from recpipe.lake import Lake, file_uri
from recpipe.layout import run_scratch
from recpipe.manifest import StageRun
from recpipe.schema import DS, RAW, REASON, SOURCE_FILE, Reason

log = logging.getLogger(__name__)

EVENTS = "events"
RAW_HASH = "raw_hash"
QUARANTINE = "quarantine"


class EmptyReplacementError(RecpipeError):
    """An input without valid events would replace a non-empty events partition."""


class ReconciliationError(RecpipeError):
    """Written row counts do not add up to the rows read; nothing was published."""


def run_clean(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Clean the raw events at ``paths.raw_events`` into partition ``ds``; returns the manifest."""
    settings = config.clean
    lake = Lake(config.root)
    with StageRun(config, "clean", ds) as run:
        ts_min, ts_max = ts_window(
            dt.date.fromisoformat(ds), settings.ts_min, settings.ts_max_days_after_ds
        )
        run.record.update(
            input=config.paths.raw_events, ts_window=[ts_min.isoformat(), ts_max.isoformat()]
        )
        raw = read_raw_events(spark, config.paths.raw_events, settings.input_format)
        bot_limit = settings.bot_max_events_per_day
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
        keep_raw = F.lit(bot_limit is not None) | F.col(REASON).isNotNull()
        checked = checked.withColumn(RAW_HASH, F.xxhash64(RAW)).withColumn(
            RAW, F.when(keep_raw, F.col(RAW))
        )
        started = time.perf_counter()
        # Parse once into a scratch Parquet copy: later passes read only the columns they
        # need, which is several times cheaper than Spark's in-memory cache of the rows.
        scratch = run_scratch(config.root, "clean", ds, uuid.uuid4().hex)
        try:
            # The first pass over the raw files: a file that cannot be read (a cut gzip) fails
            # here, as one line naming it, before anything is staged.
            with raw_read_errors(spark):
                checked.write.parquet(file_uri(scratch))
            checked = spark.read.parquet(file_uri(scratch))
            by_reason = {
                row[REASON]: row["count"] for row in checked.groupBy(REASON).count().collect()
            }
            rows_in = sum(by_reason.values())
            rows_valid = by_reason.pop(None, 0)
            log.info(
                "clean: parsed %d records, %d valid before de-duplication (%.1fs)",
                rows_in,
                rows_valid,
                time.perf_counter() - started,
            )

            valid = checked.where(F.col(REASON).isNull()).drop(REASON)
            distinct = dedupe_exact(valid, order_by=(SOURCE_FILE, RAW_HASH)).persist(
                StorageLevel.MEMORY_AND_DISK
            )
            totals = distinct.agg(
                F.count(F.lit(1)).alias("n"), F.sum(COPIES).alias("copies")
            ).first()
            if totals is None:
                raise RuntimeError(f"clean ds={ds}: the totals aggregate returned no row")
            rows_distinct, rows_copies = totals["n"], totals["copies"] or 0
            rows_duplicate = rows_copies - rows_distinct
            log.info(
                "clean: %d distinct events, %d exact duplicates (%.1fs)",
                rows_distinct,
                rows_duplicate,
                time.perf_counter() - started,
            )

            if bot_limit is not None:
                distinct = flag_bots(distinct, bot_limit)
                bots = distinct.where("is_bot").select(
                    F.col(RAW), F.lit(Reason.BOT_SUSPECT).alias(REASON), F.col(SOURCE_FILE)
                )
                events = distinct.where("NOT is_bot")
            else:
                bots = None
                events = distinct
            quarantine = checked.where(F.col(REASON).isNotNull()).select(*QUARANTINE_COLUMNS)
            if bots is not None:
                quarantine = quarantine.unionByName(bots)

            sidecar = {"_config.yaml": config.to_yaml()}
            staged_events = lake.stage(events.select(*EVENT_COLUMNS), EVENTS, {DS: ds}, sidecar)
            staged_quarantine = lake.stage(quarantine, QUARANTINE, {DS: ds}, sidecar)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

        log.info("clean: staged events and quarantine (%.1fs)", time.perf_counter() - started)
        # Reconcile from what is on disk, before anything is published.
        rows_out = staged_events.count(spark)
        quarantined = {
            row[REASON]: row["count"]
            for row in staged_quarantine.read(spark).groupBy(REASON).count().collect()
        }
        rows_quarantined = sum(quarantined.values())
        expected_quarantine = dict(by_reason)
        if bots is not None:
            expected_quarantine[Reason.BOT_SUSPECT] = rows_distinct - rows_out
        problems = []
        if rows_in != rows_out + rows_quarantined + rows_duplicate:
            problems.append(
                f"rows_in {rows_in} != rows_out {rows_out} + quarantined {rows_quarantined}"
                f" + duplicates {rows_duplicate}"
            )
        if rows_copies != rows_valid:
            problems.append(f"valid rows {rows_valid} != rows behind distinct events {rows_copies}")
        if {k: v for k, v in quarantined.items() if v} != {
            k: v for k, v in expected_quarantine.items() if v
        }:
            problems.append(f"quarantine by reason {quarantined} != expected {expected_quarantine}")
        if problems:
            staged_events.discard()
            staged_quarantine.discard()
            raise ReconciliationError("clean did not reconcile: " + "; ".join(problems))

        if rows_out == 0 and not settings.allow_empty and lake.exists(EVENTS, {DS: ds}):
            previous = lake.read(spark, EVENTS, [{DS: ds}]).count()
            if previous:
                staged_events.discard()
                staged_quarantine.discard()
                raise EmptyReplacementError(
                    f"clean ds={ds}: the input holds no valid event, and events ds={ds} has "
                    f"{previous} rows; nothing was replaced (pass --allow-empty, or set "
                    "clean.allow_empty=true, to publish an empty day over them)"
                )
        staged_events.publish(run)
        staged_quarantine.publish(run)
        distinct.unpersist()
        run.record.update(
            rows_in=rows_in,
            rows_out=rows_out,
            rows_quarantined=rows_quarantined,
            rows_duplicate=rows_duplicate,
            quarantine_by_reason={
                r: quarantined.get(r, 0) for r in Reason.ALL if quarantined.get(r)
            },
        )
    return run.manifest
