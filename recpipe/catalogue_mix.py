"""How recommendations and histories spread over one catalogue attribute (e.g. genres).

The score stage counts, in Spark, every recommended row and every history interaction per value
of ``catalog.mix_attribute`` (a multi-valued attribute counts once per value), so the report can
put the two mixes side by side: does the model narrow users to fewer genres than they watch?
Only one row per attribute value reaches the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.catalogue import NO_VALUE, NOT_IN_CATALOGUE, snapshot_ds
from recpipe.config import Config
from recpipe.lake import Lake
from recpipe.layout import ITEMS, VOCAB_ITEMS
from recpipe.schema import ATTRIBUTES, DS, ITEM_ID, ITEM_IDX, USER_IDX

_VALUE = "_value"


def attribute_values(text: Column) -> Column:
    """A multi-valued attribute as array<string>: a JSON array's elements, else ``|``-separated
    text (``Action|Comedy``), else the one value; the same rule as
    :func:`recpipe.catalogue.values_of`."""
    parsed = F.from_json(text, T.ArrayType(T.StringType()))
    parts = F.transform(F.split(text, r"\|"), lambda v: F.trim(v))  # not F.trim: 2 args = (v, i)
    return F.when(parsed.isNotNull(), parsed).otherwise(F.filter(parts, lambda v: v != ""))


def item_values(spark: SparkSession, config: Config, day: str, attribute: str) -> DataFrame:
    """``(item_id, _value)``: one row per item and value of ``attribute`` in the catalogue
    snapshot ``day`` (see :func:`recpipe.catalogue.snapshot_ds`)."""
    items = Lake(config.root).read(spark, ITEMS, [{DS: day}])
    values = attribute_values(F.col(ATTRIBUTES).getItem(attribute))
    return items.select(
        ITEM_ID,
        F.explode(F.when(F.size(values) > 0, values).otherwise(F.array(F.lit(NO_VALUE)))).alias(
            _VALUE
        ),
    )


def item_index_values(
    spark: SparkSession, config: Config, ds: str, attribute: str
) -> DataFrame | None:
    """:func:`item_values` of the catalogue as of ``ds``, keyed by ``item_idx`` through
    ``vocab_items`` of ``ds``; None without a catalogue."""
    day = snapshot_ds(config.root, ITEMS, ds)
    if day is None:
        return None
    values = item_values(spark, config, day, attribute)
    vocab = Lake(config.root).read(spark, VOCAB_ITEMS, [{DS: ds}]).select(ITEM_ID, ITEM_IDX)
    return values.join(vocab, ITEM_ID).select(ITEM_IDX, _VALUE)


def value_counts(rows: DataFrame, values: DataFrame) -> dict[str, int]:
    """Rows of ``rows`` (an ``item_id`` column) per attribute value, items missing from the
    catalogue counted under :data:`NOT_IN_CATALOGUE`; sorted by count, largest first."""
    joined = rows.select(ITEM_ID).join(values, ITEM_ID, "left")
    counted = (
        joined.select(F.coalesce(F.col(_VALUE), F.lit(NOT_IN_CATALOGUE)).alias(_VALUE))
        .groupBy(_VALUE)
        .count()
        .collect()
    )
    pairs = sorted(((r[_VALUE], int(r["count"])) for r in counted), key=lambda p: (-p[1], p[0]))
    return dict(pairs)


def intra_list_diversity(
    rows: DataFrame, values: DataFrame, ks: Sequence[int], item: str = ITEM_ID
) -> dict[int, float | None]:
    """``k ->`` the mean over users of their top-k list's mean pairwise Jaccard distance between
    the items' value sets (1 - |a & b| / |a | b|): 0 when every item of a list has the same
    values, 1 when no two share one. ``rows``: ``user_idx``, ``rank``, ``item``; ``values``:
    ``item``, ``_value``. Users without a pair within k count as nothing; None when no list
    has one. Every k comes from one self-join: a pair is in the top k when its lower-ranked
    item is.
    """
    rows = rows.where(F.col("rank") <= max(ks))
    sets = values.groupBy(item).agg(F.collect_set(_VALUE).alias("_set"))
    lists = rows.select(USER_IDX, "rank", item).join(F.broadcast(sets), item, "left")
    lists = lists.select(
        USER_IDX, "rank", F.coalesce("_set", F.array(F.lit(NOT_IN_CATALOGUE))).alias("_set")
    )
    first, second = lists.alias("a"), lists.alias("b")
    pairs = first.join(
        second,
        (F.col(f"a.{USER_IDX}") == F.col(f"b.{USER_IDX}")) & (F.col("a.rank") < F.col("b.rank")),
    )
    shared = F.size(F.array_intersect("a._set", "b._set"))
    either = F.size(F.array_union("a._set", "b._set"))
    distance = 1 - shared / either
    # avg skips nulls: pairs beyond k, and users with no pair within k.
    per_user = pairs.groupBy(F.col(f"a.{USER_IDX}")).agg(
        *(F.avg(F.when(F.col("b.rank") <= k, distance)).alias(f"k{k}") for k in ks)
    )
    means = per_user.agg(*(F.avg(f"k{k}").alias(f"k{k}") for k in ks)).collect()[0]
    return {k: None if means[f"k{k}"] is None else float(means[f"k{k}"]) for k in ks}


def catalogue_mix(
    spark: SparkSession, config: Config, ds: str, recommended: DataFrame, history: DataFrame
) -> dict[str, Any] | None:
    """{attribute, catalogue_ds, recommended, history, intra_list_diversity}: value counts of
    both frames (each with an ``item_id`` column) and the lists' diversity over the attribute
    (:func:`intra_list_diversity`; ``recommended`` also needs ``user_idx`` and ``rank``); None
    without a catalogue or with ``catalog.mix_attribute`` unset."""
    attribute = config.catalog.mix_attribute
    day = snapshot_ds(config.root, ITEMS, ds) if attribute else None
    if attribute is None or day is None:
        return None
    # Item-sized: every executor joins against it locally.
    values = F.broadcast(item_values(spark, config, day, attribute))
    k = config.score.k  # every list row has a rank within it
    return {
        "attribute": attribute,
        "catalogue_ds": day,
        "recommended": value_counts(recommended, values),
        "history": value_counts(history, values),
        "intra_list_diversity": intra_list_diversity(recommended, values, [k])[k],
    }
