"""The ``split`` stage: sessions of ``ds`` -> lake tables ``train``/``valid``/``test``.

Each protocol in ``split.protocols`` is written as partition ``ds=<ds>/protocol=<name>``.
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
    dedupe_user_item,
    leave_last_out,
    random_by_user,
    temporal,
    temporal_cuts,
)
from recpipe.lake import Lake
from recpipe.manifest import StageRun
from recpipe.reconcile import check_rows
from recpipe.schema import (
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
from recpipe.stages.sessionize import SESSIONS

PROTOCOL = "protocol"
SPLIT_COLUMNS: tuple[str, ...] = (
    USER_ID, USER_IDX, ITEM_ID, ITEM_IDX, EVENT_TYPE, TS, VALUE, SESSION_ID
)  # fmt: skip


def _epoch_ms(moment: dt.datetime) -> int:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return int(aware.timestamp() * 1000)


def label_parts(interactions: DataFrame, config: Config, protocol: str) -> tuple[DataFrame, dict]:
    """Add the ``part`` column for ``protocol``; returns it with the protocol's settings."""
    settings = config.split
    spec: dict[str, Any] = {"dedupe_user_item": settings.dedupe_user_item}
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
    raise ValueError(f"split.protocols: unknown protocol {protocol!r}")


def run_split(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Split the interactions in ``sessions`` for ``ds`` under every configured protocol."""
    lake = Lake(config.root)
    with StageRun(config, "split", ds) as run:
        lake.require(SESSIONS, ds, "sessionize")
        sessions = lake.read(spark, SESSIONS, [{DS: ds}])
        check_rows(SESSIONS, ds, sessions.count(), config.root, "sessionize")
        interactions = explode_sessions(sessions).withColumn(
            EVENT_RANK, event_rank(config.clean.event_types)
        )
        rows_in = interactions.count()
        if config.split.dedupe_user_item:
            interactions = dedupe_user_item(interactions)
        interactions = interactions.persist(StorageLevel.MEMORY_AND_DISK)
        rows_used = interactions.count()
        run.record.update(rows_in=rows_in, rows_repeat_dropped=rows_in - rows_used, protocols={})
        staged = []
        try:
            for protocol in config.split.protocols:
                labelled, spec = label_parts(interactions, config, protocol)
                labelled = labelled.withColumn(TS, F.timestamp_millis(TS_MS)).persist()
                counts: dict[str, Any] = {}
                for part in PARTS:
                    rows = labelled.where(F.col(PART) == part).select(*SPLIT_COLUMNS)
                    staged_part = lake.stage(
                        rows,
                        part,
                        {DS: ds, PROTOCOL: protocol},
                        {"_config.yaml": config.to_yaml()},
                    )
                    staged.append(staged_part)
                    written = (
                        staged_part.read(spark)
                        .agg(
                            F.count(F.lit(1)).alias("rows"),
                            F.count_distinct(USER_IDX).alias("users"),
                        )
                        .first()
                    )
                    if written is None:
                        raise RuntimeError(f"{protocol} {part}: the row count returned no row")
                    counts[part] = {"rows": written["rows"], "users": written["users"]}
                labelled.unpersist()
                total = sum(c["rows"] for c in counts.values())
                if total != rows_used:
                    raise RuntimeError(f"{protocol}: parts hold {total} rows, expected {rows_used}")
                run.record["protocols"][protocol] = {"settings": spec, **counts}
        except BaseException:
            for staged_part in staged:
                staged_part.discard()
            raise
        finally:
            interactions.unpersist()
        for staged_part in staged:
            staged_part.publish(run)
        run.record["rows_out"] = rows_used * len(config.split.protocols)
    return run.manifest
