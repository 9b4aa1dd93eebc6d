"""The ``vocab`` stage: extend the persisted user and item indexes with ids new by ``ds``."""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.etl.vocab import extend_vocab, first_seen
from recpipe.lake import Lake
from recpipe.manifest import StageRun
from recpipe.reconcile import check_rows_per_ds
from recpipe.schema import DS, ITEM_ID, ITEM_IDX, TS, USER_ID, USER_IDX
from recpipe.stages.clean import EVENTS

VOCAB_USERS = "vocab_users"
VOCAB_ITEMS = "vocab_items"
VOCABS = ((VOCAB_USERS, USER_ID, USER_IDX), (VOCAB_ITEMS, ITEM_ID, ITEM_IDX))


def previous_ds(lake: Lake, table: str, ds: str) -> str | None:
    """Latest published ``ds`` of ``table`` strictly before ``ds``."""
    earlier = [value for value in lake.ds_values(table) if value < ds]
    return earlier[-1] if earlier else None


def run_vocab(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Write ``vocab_users``/``vocab_items`` snapshots for ``ds`` from all events up to ``ds``."""
    lake = Lake(config.root)
    with StageRun(config, "vocab", ds) as run:
        event_ds = lake.history(EVENTS, ds, None)
        events = lake.read(spark, EVENTS, [{DS: value} for value in event_ds])
        check_rows_per_ds(events, EVENTS, event_ds, config.root, "clean")
        run.record["events_ds"] = event_ds
        staged = []
        for table, id_col, idx_col in VOCABS:
            base_ds = previous_ds(lake, table, ds)
            existing = lake.read(spark, table, [{DS: base_ds}]).drop(DS) if base_ds else None
            seen = first_seen(events, id_col, TS).persist()
            mapping = extend_vocab(seen, existing, id_col=id_col, idx_col=idx_col, ds=ds)
            part = lake.stage(mapping, table, {DS: ds}, {"_config.yaml": config.to_yaml()})
            stats = (
                part.read(spark)
                .agg(
                    F.count(F.lit(1)).alias("rows"),
                    F.max(idx_col).alias("max_idx"),
                    F.count_distinct(idx_col).alias("idx"),
                    F.count_distinct(id_col).alias("ids"),
                )
                .first()
            )
            if stats is None:
                raise RuntimeError(f"{table}: the index aggregate returned no row")
            total = stats["rows"]
            if not total == stats["max_idx"] == stats["idx"] == stats["ids"]:
                part.discard()
                raise RuntimeError(f"{table}: indexes are not dense and unique 1..{total}: {stats}")
            staged.append(part)
            before = existing.count() if existing is not None else 0
            name = table.removeprefix("vocab_")
            run.record[name] = {
                "base_ds": base_ds,
                "before": before,
                "new": total - before,
                "ids_in_events": seen.count(),
            }
            run.record[f"n_{name}"] = total
            seen.unpersist()
        for part in staged:
            part.publish(run)
        # rows: distinct ids read from events, and vocabulary entries written.
        run.record["rows_in"] = (
            run.record["users"]["ids_in_events"] + run.record["items"]["ids_in_events"]
        )
        run.record["rows_out"] = run.record["n_users"] + run.record["n_items"]
    return run.manifest
