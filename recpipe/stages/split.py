"""The ``split`` stage: sessions of ``ds`` -> lake tables ``train``/``valid``/``test``.

Each protocol in ``split.protocols`` is written as partition ``ds=<ds>/protocol=<name>``, and
with ``score.train_on: all`` protocol ``all`` too: every interaction in train (recpipe.serving).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.etl.sessionize import EVENT_RANK, TS_MS, event_rank, explode_sessions
from recpipe.etl.split import (
    PART,
    PARTS,
    cold_start,
    dedupe_user_item,
    first_seen,
    leave_last_out,
    random_by_user,
    temporal,
    temporal_cuts,
)
from recpipe.lake import Lake, Transaction, transaction
from recpipe.layout import SESSIONS, TRAIN
from recpipe.manifest import SplitManifest, SplitPart, SplitProtocol
from recpipe.reconcile import check_rows
from recpipe.schema import (
    CONTEXT,
    DS,
    EVENT_TYPE,
    ITEM_ID,
    ITEM_IDX,
    SESSION_ID,
    TS,
    USER_ID,
    USER_IDX,
    VALUE,
)
from recpipe.serving import ALL, written_protocols
from recpipe.spark import one_row
from recpipe.task_memory import check_shuffle_fits

# The cold-start protocols and whose first interaction time decides what is cold.
COLD_START_KEYS = {"cold_items": ITEM_IDX, "cold_users": USER_IDX}

PROTOCOL = "protocol"
SPLIT_COLUMNS: tuple[str, ...] = (
    USER_ID, USER_IDX, ITEM_ID, ITEM_IDX, EVENT_TYPE, TS, VALUE, SESSION_ID, CONTEXT
)  # fmt: skip


def _epoch_ms(moment: dt.datetime) -> int:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return int(aware.timestamp() * 1000)


def label_parts(interactions: DataFrame, config: Config, protocol: str) -> tuple[DataFrame, dict]:
    """Add the ``part`` column for ``protocol``; returns it with the protocol's settings."""
    settings = config.split
    spec: dict[str, Any] = {"dedupe_user_item": settings.dedupe_user_item}
    if protocol == ALL:  # the served models' refit: every interaction is train
        spec["rule"] = "every interaction of ds in train (score.train_on: all)"
        return interactions.withColumn(PART, F.lit(TRAIN)), spec
    if protocol == "leave_last_out":
        spec["min_interactions"] = settings.leave_last_out.min_interactions
        return leave_last_out(interactions, min_interactions=spec["min_interactions"]), spec
    if protocol == "random_by_user":
        ratios = settings.random_by_user
        spec.update(ratios.model_dump())
        return random_by_user(
            interactions, train=ratios.train, valid=ratios.valid, seed=ratios.seed
        ), spec
    if protocol == "temporal":
        cfg = settings.temporal
        if cfg.cut is not None:
            test_ms = _epoch_ms(cfg.cut)
            valid_ms = _epoch_ms(cfg.valid_cut) if cfg.valid_cut is not None else test_ms
            if valid_ms > test_ms:
                raise ValueError("split.temporal.valid_cut must not be after split.temporal.cut")
        else:
            valid_ms, test_ms = temporal_cuts(
                interactions, test_ratio=cfg.test_ratio, valid_ratio=cfg.valid_ratio
            )
            if cfg.valid_ratio == 0:
                valid_ms = test_ms
        spec.update(
            valid_cut=dt.datetime.fromtimestamp(valid_ms / 1000, dt.UTC).isoformat(),
            test_cut=dt.datetime.fromtimestamp(test_ms / 1000, dt.UTC).isoformat(),
            test_ratio=None if cfg.cut else cfg.test_ratio,
            valid_ratio=None if cfg.cut else cfg.valid_ratio,
        )
        return temporal(interactions, valid_cut_ms=valid_ms, test_cut_ms=test_ms), spec
    if protocol in COLD_START_KEYS:
        key = COLD_START_KEYS[protocol]
        cold = settings.cold_items if protocol == "cold_items" else settings.cold_users
        # The cuts over first-seen times: the latest test_ratio of the items (users) are cold.
        valid_ms, test_ms = temporal_cuts(
            first_seen(interactions, key), test_ratio=cold.test_ratio, valid_ratio=cold.valid_ratio
        )
        if cold.valid_ratio == 0:
            valid_ms = test_ms
        spec.update(
            valid_cut=dt.datetime.fromtimestamp(valid_ms / 1000, dt.UTC).isoformat(),
            test_cut=dt.datetime.fromtimestamp(test_ms / 1000, dt.UTC).isoformat(),
            test_ratio=cold.test_ratio,
            valid_ratio=cold.valid_ratio,
            rule=f"{key.split('_')[0]}s first seen at or after test_cut: every interaction in test",
        )
        return cold_start(interactions, key, valid_cut_ms=valid_ms, test_cut_ms=test_ms), spec
    raise ValueError(f"split.protocols: unknown protocol {protocol!r}")


def run_split(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Split the interactions in ``sessions`` for ``ds`` under every configured protocol."""
    with transaction(config, "split", ds, SplitManifest()) as tx:
        interactions, rows_in = read_interactions(spark, config, tx.lake, ds)
        try:
            rows_used = interactions.count()
            tx.record.rows_in = rows_in
            tx.record.rows_repeat_dropped = rows_in - rows_used
            protocols: dict[str, SplitProtocol] = {}
            tx.record.protocols = protocols  # filled as each protocol is staged
            for protocol in written_protocols(config):
                protocols[protocol] = stage_protocol(spark, tx, interactions, protocol, rows_used)
        finally:
            interactions.unpersist()
        tx.record.rows_out = rows_used * len(protocols)
    return tx.manifest


def read_interactions(
    spark: SparkSession, config: Config, lake: Lake, ds: str
) -> tuple[DataFrame, int]:
    """The interactions of the ``sessions`` of ``ds`` (persisted), and how many were read.

    The sessions are reconciled with what ``sessionize`` published; with
    ``split.dedupe_user_item`` repeated (user, item) pairs are dropped.
    """
    lake.require(SESSIONS, ds, "sessionize")
    sessions = lake.read(spark, SESSIONS, [{DS: ds}])
    check_rows(SESSIONS, ds, sessions.count(), config.root, "sessionize")
    interactions = explode_sessions(sessions).withColumn(
        EVENT_RANK, event_rank(config.clean.event_types)
    )
    rows_in = interactions.count()
    check_shuffle_fits(spark, "split", rows_in)
    if config.split.dedupe_user_item:
        interactions = dedupe_user_item(interactions)
    return interactions.persist(StorageLevel.MEMORY_AND_DISK), rows_in


def stage_protocol(
    spark: SparkSession,
    tx: Transaction[SplitManifest],
    interactions: DataFrame,
    protocol: str,
    rows_used: int,
) -> SplitProtocol:
    """Stage the parts of ``protocol``; reconcile their rows with the ``rows_used`` read."""
    labelled, spec = label_parts(interactions, tx.config, protocol)
    labelled = labelled.withColumn(TS, F.timestamp_millis(TS_MS)).persist()
    counts: dict[str, SplitPart] = {}
    for part in PARTS:
        rows = labelled.where(F.col(PART) == part).select(*SPLIT_COLUMNS)
        staged = tx.stage(rows, part, {DS: tx.ds, PROTOCOL: protocol})
        written = one_row(
            staged.read(spark).agg(
                F.count(F.lit(1)).alias("rows"), F.count_distinct(USER_IDX).alias("users")
            ),
            f"{protocol} {part}",
        )
        counts[part] = SplitPart(rows=written["rows"], users=written["users"])
    labelled.unpersist()
    total = sum(c.rows for c in counts.values())
    tx.reconcile(
        None
        if total == rows_used
        else f"{protocol}: parts hold {total} rows, expected {rows_used}",
        RuntimeError,
    )
    return SplitProtocol(settings=spec, **counts)
