"""The ``catalog`` stage: item catalogue, user profiles and knowledge graph -> lake tables.

For one ``ds`` (catalogues change, so each day holds the whole snapshot the input gives), every
configured reference input (:data:`recpipe.etl.catalog.REFERENCE_INPUTS`: ``paths.raw_items``,
``paths.raw_users``, ``paths.raw_kg``, ``paths.raw_links``) is read, checked, de-duplicated and
staged as its table plus its part of ``catalog_quarantine`` (partition ds/input), reconciled
exactly, then all of them are published in one commit. Inputs left unset are not written.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import SparkSession

from recpipe.config import Config, ConfigError
from recpipe.etl.catalog import (
    REFERENCE_INPUTS,
    ReferenceInput,
    classify_reference,
    dedupe_reference,
    reconcile_reference,
)
from recpipe.etl.sources import raw_read_errors, read_raw_events
from recpipe.lake import Transaction, transaction
from recpipe.layout import CATALOG_QUARANTINE
from recpipe.manifest import CatalogInputCounts, CatalogManifest
from recpipe.reconcile import ReconciliationError
from recpipe.schema import DS, INPUT, REASON
from recpipe.sweep import scratch_folder

log = logging.getLogger(__name__)


def configured_inputs(config: Config) -> list[tuple[ReferenceInput, str]]:
    """The reference inputs whose ``paths.raw_*`` key is set, with their locations."""
    chosen = []
    for spec in REFERENCE_INPUTS:
        location = getattr(config.paths, f"raw_{spec.name}")
        if location:
            chosen.append((spec, location))
    return chosen


def unset_message() -> str:
    """What to set when no reference input is configured."""
    keys = ", ".join(spec.path_key for spec in REFERENCE_INPUTS)
    return f"no catalogue input is set ({keys}): nothing to clean"


def run_catalog(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Clean every configured reference input into partition ``ds``; returns the manifest."""
    inputs = configured_inputs(config)
    if not inputs:
        raise ConfigError(unset_message())
    with transaction(config, "catalog", ds, CatalogManifest()) as tx:
        counts = {}
        for spec, location in inputs:
            counts[spec.name] = clean_input(spark, config, tx, spec, location)
        tx.record.inputs = counts
    return tx.manifest


def clean_input(
    spark: SparkSession,
    config: Config,
    tx: Transaction[CatalogManifest],
    spec: ReferenceInput,
    location: str,
) -> CatalogInputCounts:
    """Read, check, de-duplicate, stage and reconcile one reference input."""
    started = time.perf_counter()
    raw = read_raw_events(spark, location, config.catalog.input_format, spec.contract)
    checked = classify_reference(raw, spec, config.clean.max_id_length)
    with scratch_folder(config.root, "catalog", tx.ds) as scratch:
        # One parse pass, written once: every later count reads the copy, and a file that
        # cannot be read fails here as one line naming it, before anything is staged.
        with raw_read_errors(spark, spec.path_key):
            checked.write.parquet(scratch.uri)
        parsed = spark.read.parquet(scratch.uri)
        by_reason = {r[REASON]: r["count"] for r in parsed.groupBy(REASON).count().collect()}
        deduped = dedupe_reference(parsed, spec)
        try:
            rows = tx.stage(deduped.rows.select(*spec.columns), spec.table)
            quarantine = tx.stage(
                deduped.quarantine, CATALOG_QUARANTINE, {DS: tx.ds, INPUT: spec.name}
            )
        finally:
            deduped.release()
    rows_out = rows.count(spark)
    quarantined = {
        r[REASON]: r["count"] for r in quarantine.read(spark).groupBy(REASON).count().collect()
    }
    tx.reconcile(
        reconcile_reference(spec, by_reason, deduped, rows_out, quarantined), ReconciliationError
    )
    result = CatalogInputCounts(
        input=location,
        table=spec.table,
        rows_in=sum(by_reason.values()),
        rows_out=rows_out,
        rows_quarantined=sum(quarantined.values()),
        rows_duplicate=deduped.duplicates,
        quarantine_by_reason=dict(sorted(quarantined.items())),
    )
    log.info(
        "catalog: %s: %d records -> %d rows, %d quarantined, %d duplicates (%.1fs)",
        spec.name, result.rows_in, rows_out, result.rows_quarantined, deduped.duplicates,
        time.perf_counter() - started,
    )  # fmt: skip
    return result
