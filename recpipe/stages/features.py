"""The ``features`` stage: declared feature specs -> ``item_features``, ``user_features``.

For one ``ds``, each entity with specs (``features.items``, ``features.users``) reads the
newest catalogue snapshot at or before ``ds`` (``items`` / ``users``) and the ``vocab`` of
``ds``, and writes one row per indexed key with every feature (see
:mod:`recpipe.etl.features`). ``feature_vocab`` carries the stable value indexes forward: the
previous day's rows unchanged (an entity not built today included), plus today's new values.
Everything is published in one commit after the staged files reconcile.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.catalogue import snapshot_ds
from recpipe.config import Config, ConfigError
from recpipe.errors import MissingInputError
from recpipe.etl.features import (
    ENTITY_COL,
    FEATURE,
    FEATURE_VALUE,
    VALUE_INDEX,
    VOCAB_COLUMNS,
    bucket_of,
    check_fields,
    extend_values,
    fields_present,
    indexed_lists,
    parsed_number,
    quantile_edges,
    raw_field,
    token_count,
    token_indexes,
    value_lists,
)
from recpipe.feature_specs import (
    CONTEXT,
    ENTITIES,
    MISSING_INDEX,
    OOV_INDEX,
    TIME_SIZES,
    CategoricalSpec,
    MultiSpec,
    NumericSpec,
    TextSpec,
    TimeSpec,
    source_field,
    width,
)
from recpipe.lake import Transaction, transaction
from recpipe.layout import (
    EVENTS,
    FEATURE_VOCAB,
    ITEM_FEATURES,
    ITEMS,
    USER_FEATURES,
    USERS,
    VOCAB_ITEMS,
    VOCAB_USERS,
)
from recpipe.manifest import FeaturesManifest, FeatureStats, FeatureTableCounts
from recpipe.schema import DS, EXTRA, ITEM_ID, ITEM_IDX, TS, USER_ID, USER_IDX
from recpipe.spark import one_row
from recpipe.stages.vocab import previous_ds

log = logging.getLogger(__name__)

Spec = CategoricalSpec | MultiSpec | NumericSpec | TextSpec
# entity -> (catalogue table, vocab table, id column, index column, feature table)
ENTITY_TABLES = {
    "items": (ITEMS, VOCAB_ITEMS, ITEM_ID, ITEM_IDX, ITEM_FEATURES),
    "users": (USERS, VOCAB_USERS, USER_ID, USER_IDX, USER_FEATURES),
}
_NUMBER, _HAS_RAW, _EVENT = "_number", "_has_raw", "_event"


def configured_entities(config: Config) -> list[str]:
    """The entities with at least one declared feature (``context`` last)."""
    return [entity for entity in (*ENTITIES, CONTEXT) if getattr(config.features, entity)]


def unset_message() -> str:
    """What to set when no feature is declared."""
    return (
        "no feature is declared (features.items, features.users, features.context): "
        "nothing to build"
    )


def run_features(spark: SparkSession, config: Config, ds: str) -> dict[str, Any]:
    """Build the feature tables of every configured entity for ``ds``; returns the manifest."""
    entities = configured_entities(config)
    if not entities:
        raise ConfigError(unset_message())
    with transaction(config, "features", ds, FeaturesManifest()) as tx:
        base_ds = previous_ds(tx.lake, FEATURE_VOCAB, ds)
        previous = tx.lake.read(spark, FEATURE_VOCAB, [{DS: base_ds}]) if base_ds else None
        vocab = previous.select(*VOCAB_COLUMNS) if previous is not None else None
        tx.record.tables, tx.record.features = {}, {}
        for entity in entities:
            if entity == CONTEXT:
                stats, vocab = build_context(spark, config, tx, vocab)
                tx.record.features.update({f"{CONTEXT}.{n}": s for n, s in stats.items()})
                continue
            counts, stats, vocab = build_entity(spark, config, tx, entity, vocab)
            tx.record.tables[entity] = counts
            tx.record.features.update({f"{entity}.{name}": s for name, s in stats.items()})
        tx.record.vocab_base_ds = base_ds
        tx.record.vocab_rows = stage_vocabulary(spark, tx, vocab, previous)
        tx.record.rows_in = sum(counts.rows_in for counts in tx.record.tables.values())
        tx.record.rows_out = sum(counts.rows_out for counts in tx.record.tables.values())
    return tx.manifest


def build_entity(
    spark: SparkSession,
    config: Config,
    tx: Transaction[FeaturesManifest],
    entity: str,
    vocab: DataFrame | None,
) -> tuple[FeatureTableCounts, dict[str, FeatureStats], DataFrame | None]:
    """Stage one entity's feature table; returns its counts, feature stats and the whole
    vocabulary with this entity's values added."""
    started = time.perf_counter()
    table, vocab_table, key, idx, out_table = ENTITY_TABLES[entity]
    specs: dict[str, Spec] = getattr(config.features, entity)
    day = snapshot_ds(config.root, table, tx.ds)
    if day is None:
        raise MissingInputError(
            f"features.{entity} is set but there is no '{table}' catalogue at or before "
            f"ds={tx.ds}: run `recpipe catalog` with paths.raw_{entity} first"
        )
    catalogue = tx.lake.read(spark, table, [{DS: day}]).drop(DS)
    check_fields(specs, fields_present(catalogue, entity), entity, table, day)
    ids = tx.lake.read(spark, vocab_table, [{DS: tx.ds}]).select(key, idx)
    rows = catalogue.join(ids, key, "inner").persist()
    rows_in, rows_out, indexed = catalogue.count(), rows.count(), ids.count()
    out = rows.select(key, idx)
    direct: list[Column] = []
    stats: dict[str, FeatureStats] = {}
    for name, spec in specs.items():
        column, stats[name], vocab = feature_column(rows, entity, key, idx, name, spec, vocab, tx)
        if isinstance(column, DataFrame):
            out = out.join(column, idx, "left")
        else:
            direct.append(column.alias(name))
    if direct:
        out = out.join(rows.select(idx, *direct), idx, "left")
    for name, spec in specs.items():
        out = out.withColumn(name, F.coalesce(F.col(name), _missing(spec)))
    part = tx.stage(out.select(key, idx, *specs), out_table)
    written = one_row(
        part.read(spark).agg(F.count(F.lit(1)).alias("rows"), F.count_distinct(idx).alias("keys")),
        out_table,
    )
    tx.reconcile(
        None
        if written["rows"] == written["keys"] == rows_out
        else f"{out_table}: {written['rows']} rows, {written['keys']} distinct {idx}, "
        f"{rows_out} catalogue rows with an index",
    )
    rows.unpersist()
    counts = FeatureTableCounts(
        table=out_table,
        catalogue_ds=day,
        rows_in=rows_in,
        rows_out=rows_out,
        rows_without_index=rows_in - rows_out,
        index_without_row=indexed - rows_out,
    )
    log.info(
        "features: %s: %d catalogue rows -> %d with an index, %d features (%.1fs)",
        entity, rows_in, rows_out, len(specs), time.perf_counter() - started,
    )  # fmt: skip
    return counts, stats, vocab


def build_context(
    spark: SparkSession, config: Config, tx: Transaction[FeaturesManifest], vocab: DataFrame | None
) -> tuple[dict[str, FeatureStats], DataFrame | None]:
    """Stats of every context feature over the events of the sessionize window ending at
    ``ds``, and the vocabulary with the categorical ones' new values added."""
    started = time.perf_counter()
    days = tx.lake.history(EVENTS, tx.ds, config.sessionize.history_days)
    events = tx.lake.read(spark, EVENTS, [{DS: day} for day in days]).select(
        F.monotonically_increasing_id().alias(_EVENT), F.col(EXTRA), F.col(TS)
    )
    total, with_ts = one_row(events.agg(F.count(F.lit(1)), F.count(TS)), "context events")
    stats: dict[str, FeatureStats] = {}
    for name, spec in config.features.context.items():
        if isinstance(spec, TimeSpec):
            stats[name] = FeatureStats(
                kind=spec.kind, field=f"ts.{spec.part}", size=TIME_SIZES[spec.part],
                rows_with_value=with_ts, rows_missing=total - with_ts,
            )  # fmt: skip
            continue
        field = source_field(name, spec)
        raw = F.trim(F.col(EXTRA)[field])
        values = (
            events.select(_EVENT, F.when(raw != "", raw).alias(FEATURE_VALUE))
            .where(F.col(FEATURE_VALUE).isNotNull())
            .persist()
        )
        present = values.count()
        if total and not present:
            raise ConfigError(
                f"'features.context.{name}': no event in ds {days[0]}..{tx.ds} has a field "
                f"'{field}'"
            )
        stats[name] = FeatureStats(
            kind=spec.kind, field=field, rows_with_value=present, rows_missing=total - present
        )
        _, vocab = _extend_vocabulary(
            values, vocab, CONTEXT, name, spec.min_count, tx.ds, stats[name]
        )
        values.unpersist()
    log.info(
        "features: context: %d features over the events of %d days (%.1fs)",
        len(stats), len(days), time.perf_counter() - started,
    )  # fmt: skip
    return stats, vocab


def _missing(spec: Spec) -> Column:
    """The column value of a key without the feature."""
    if isinstance(spec, MultiSpec | TextSpec):
        return F.array_repeat(F.lit(MISSING_INDEX), width(spec))
    if isinstance(spec, NumericSpec) and spec.transform != "bucketize":
        return F.lit(0.0).cast("float")
    return F.lit(MISSING_INDEX)


def feature_column(
    rows: DataFrame,
    entity: str,
    key: str,
    idx: str,
    name: str,
    spec: Spec,
    vocab: DataFrame | None,
    tx: Transaction[FeaturesManifest],
) -> tuple[DataFrame | Column, FeatureStats, DataFrame | None]:
    """One feature: a frame (idx, name) or a column over ``rows``, its stats, the vocabulary."""
    stats = FeatureStats(kind=spec.kind, field=source_field(name, spec), width=width(spec))
    raw = raw_field(name, spec, entity)
    present, total = one_row(rows.agg(F.count(raw), F.count(F.lit(1))), name)
    stats.rows_with_value, stats.rows_missing = present, total - present
    if isinstance(spec, CategoricalSpec | MultiSpec):
        column, vocab = _vocabulary_feature(rows, entity, key, idx, name, spec, vocab, stats, tx)
        return column, stats, vocab
    if isinstance(spec, TextSpec):
        stats.truncated_rows = rows.where(token_count(raw) > spec.max_tokens).count()
        stats.size = spec.hash_buckets + 1
        return token_indexes(raw, spec), stats, vocab
    return _numeric_column(rows, raw, spec, stats, f"features.{entity}.{name}"), stats, vocab


def _vocabulary_feature(
    rows: DataFrame,
    entity: str,
    key: str,
    idx: str,
    name: str,
    spec: CategoricalSpec | MultiSpec,
    vocab: DataFrame | None,
    stats: FeatureStats,
    tx: Transaction[FeaturesManifest],
) -> tuple[DataFrame, DataFrame]:
    """(idx, name) of a categorical or multi-valued feature, and the whole vocabulary with
    its new values added (other features' rows unchanged)."""
    values = value_lists(rows, idx, name, spec, entity).persist()
    extended, whole = _extend_vocabulary(values, vocab, entity, name, spec.min_count, tx.ds, stats)
    size = width(spec)
    lists = indexed_lists(values, extended, idx, size).localCheckpoint(eager=True)
    totals = one_row(
        lists.agg(
            F.coalesce(F.sum("_oov"), F.lit(0)).alias("oov"),
            F.count(F.when(F.col("_count") > size, 1)).alias("truncated"),
        ),
        f"{name} indexes",
    )
    stats.oov_values, stats.truncated_rows = totals["oov"], totals["truncated"]
    values.unpersist()
    scalar = F.col("indexes")[0] if isinstance(spec, CategoricalSpec) else F.col("indexes")
    return lists.select(idx, scalar.alias(name)), whole


def _extend_vocabulary(
    values: DataFrame,
    vocab: DataFrame | None,
    entity: str,
    name: str,
    min_count: int,
    ds: str,
    stats: FeatureStats,
) -> tuple[DataFrame, DataFrame]:
    """One feature's vocabulary with today's ``values`` (key, value) added, checkpointed, and
    the whole vocabulary with it in place of its old rows; sets ``stats``' new values,
    vocabulary and size."""
    ours = (F.col(ENTITY_COL) == entity) & (F.col(FEATURE) == name)
    existing = vocab.where(ours) if vocab is not None else None
    extended, stats.new_values = extend_values(
        values, existing, entity=entity, name=name, min_count=min_count, ds=ds
    )
    extended = extended.localCheckpoint(eager=True)
    stats.vocabulary = extended.count()
    largest = one_row(extended.agg(F.max(VALUE_INDEX)), f"{name} vocabulary")[0]
    stats.size = max(largest or 0, OOV_INDEX) + 1
    others = vocab.where(~ours) if vocab is not None else None
    return extended, extended if others is None else others.unionByName(extended)


def _numeric_column(
    rows: DataFrame, raw: Column, spec: NumericSpec, stats: FeatureStats, key: str
) -> Column:
    """A numeric feature's column over ``rows`` (standardised, bucketised or raw)."""
    number = parsed_number(raw)
    parsed = rows.select(number.alias(_NUMBER), raw.isNotNull().alias(_HAS_RAW))
    summary = one_row(
        parsed.agg(
            F.count(_NUMBER).alias("valid"),
            F.count(F.when(F.col(_HAS_RAW) & F.col(_NUMBER).isNull(), 1)).alias("invalid"),
            F.mean(_NUMBER).alias("mean"),
            F.stddev_pop(_NUMBER).alias("std"),
        ),
        "numeric summary",
    )
    if summary["valid"] == 0:
        raise ConfigError(
            f"'{key}': kind numeric, but no value of field '{stats.field}' is a number"
        )
    stats.rows_invalid = summary["invalid"]
    stats.rows_with_value -= summary["invalid"]
    stats.rows_missing += summary["invalid"]
    stats.mean, stats.std = float(summary["mean"]), float(summary["std"])
    if spec.transform == "bucketize":
        stats.boundaries = quantile_edges(parsed, _NUMBER, spec.buckets)
        stats.size = len(stats.boundaries) + 2  # 0 missing, then 1 + edges reached
        return bucket_of(number, stats.boundaries)
    if spec.transform == "standardize":
        scale = stats.std if stats.std > 0 else 1.0
        number = (number - F.lit(stats.mean)) / F.lit(scale)
    return F.coalesce(number, F.lit(0.0)).cast("float")


def stage_vocabulary(
    spark: SparkSession,
    tx: Transaction[FeaturesManifest],
    vocab: DataFrame | None,
    previous: DataFrame | None,
) -> int:
    """Stage ``feature_vocab`` for ``tx.ds`` and reconcile it: indexes unique per feature,
    every previous row kept as it was. Returns its rows."""
    if vocab is None:
        return 0
    part = tx.stage(vocab.select(*VOCAB_COLUMNS), FEATURE_VOCAB)
    written = part.read(spark)
    problems = []
    clashes = (
        written.groupBy(ENTITY_COL, FEATURE, VALUE_INDEX).count().where(F.col("count") > 1).count()
    )
    if clashes:
        problems.append(f"{clashes} indexes given to more than one value")
    if previous is not None:
        lost = previous.select(*VOCAB_COLUMNS).exceptAll(written).count()
        if lost:
            problems.append(f"{lost} rows of the previous vocabulary changed or missing")
    tx.reconcile(f"{FEATURE_VOCAB}: " + "; ".join(problems) if problems else None)
    return written.count()
