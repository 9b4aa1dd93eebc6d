"""The ``vocab`` stage: extend the persisted user and item indexes with ids new by ``ds``."""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.etl.vocab import extend_vocab, first_seen
from recpipe.lake import Lake, Transaction, transaction
from recpipe.layout import EVENTS, VOCAB_ITEMS, VOCAB_USERS
from recpipe.manifest import VocabGrowth, VocabManifest
from recpipe.reconcile import check_rows_per_ds
from recpipe.schema import DS, ITEM_ID, ITEM_IDX, TS, USER_ID, USER_IDX
from recpipe.spark import one_row

VOCABS = ((VOCAB_USERS, USER_ID, USER_IDX), (VOCAB_ITEMS, ITEM_ID, ITEM_IDX))


def previous_ds(lake: Lake, table: str, ds: str) -> str | None:
    """Latest published ``ds`` of ``table`` strictly before ``ds``."""
    earlier = [value for value in lake.ds_values(table) if value < ds]
    return earlier[-1] if earlier else None


def run_vocab(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Write ``vocab_users``/``vocab_items`` snapshots for ``ds`` from all events up to ``ds``."""
    with transaction(config, "vocab", ds, VocabManifest()) as tx:
        event_ds = tx.lake.history(EVENTS, ds, None)
        events = tx.lake.read(spark, EVENTS, [{DS: value} for value in event_ds])
        check_rows_per_ds(events, EVENTS, event_ds, config.root, "clean")
        tx.record.events_ds = event_ds
        tx.record.users, tx.record.n_users = stage_vocab(spark, tx, events, *VOCABS[0])
        tx.record.items, tx.record.n_items = stage_vocab(spark, tx, events, *VOCABS[1])
        # rows: distinct ids read from events, and vocabulary entries written.
        tx.record.rows_in = tx.record.users.ids_in_events + tx.record.items.ids_in_events
        tx.record.rows_out = tx.record.n_users + tx.record.n_items
    return tx.manifest


def stage_vocab(
    spark: SparkSession,
    tx: Transaction[VocabManifest],
    events: DataFrame,
    table: str,
    id_col: str,
    idx_col: str,
) -> tuple[VocabGrowth, int]:
    """Stage ``table`` for ``tx.ds``: the previous snapshot plus ids first seen since.

    Reconciled from the staged files: indexes dense and unique ``1..n``. Returns how the
    vocabulary grew and its size ``n``.
    """
    base_ds = previous_ds(tx.lake, table, tx.ds)
    existing = tx.lake.read(spark, table, [{DS: base_ds}]).drop(DS) if base_ds else None
    seen = first_seen(events, id_col, TS).persist()
    mapping = extend_vocab(seen, existing, id_col=id_col, idx_col=idx_col, ds=tx.ds)
    part = tx.stage(mapping, table)
    stats = one_row(
        part.read(spark).agg(
            F.count(F.lit(1)).alias("rows"),
            F.max(idx_col).alias("max_idx"),
            F.count_distinct(idx_col).alias("idx"),
            F.count_distinct(id_col).alias("ids"),
        ),
        f"{table} index",
    )
    total = stats["rows"]
    dense = total == stats["max_idx"] == stats["idx"] == stats["ids"]
    tx.reconcile(
        None if dense else f"{table}: indexes are not dense and unique 1..{total}: {stats}",
        RuntimeError,
    )
    before = existing.count() if existing is not None else 0
    growth = VocabGrowth(
        base_ds=base_ds, before=before, new=total - before, ids_in_events=seen.count()
    )
    seen.unpersist()
    return growth, total
