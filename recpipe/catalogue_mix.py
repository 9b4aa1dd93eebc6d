"""How recommendations and histories spread over one catalogue attribute (e.g. genres).

The score stage counts, in Spark, every recommended row and every history interaction per value
of ``catalog.mix_attribute`` (a multi-valued attribute counts once per value), so the report can
put the two mixes side by side: does the model narrow users to fewer genres than they watch?
Only one row per attribute value reaches the driver.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.catalogue import snapshot_ds
from recpipe.config import Config
from recpipe.lake import Lake
from recpipe.layout import ITEMS
from recpipe.schema import ATTRIBUTES, DS, ITEM_ID

NOT_IN_CATALOGUE = "(not in catalogue)"
NO_VALUE = "(none)"
_VALUE = "_value"


def attribute_values(text: Column) -> Column:
    """A multi-valued attribute as array<string>: a JSON array's elements, else ``|``-separated
    text (``Action|Comedy``), else the one value; the same rule as
    :func:`recpipe.catalogue.values_of`."""
    parsed = F.from_json(text, T.ArrayType(T.StringType()))
    parts = F.transform(F.split(text, r"\|"), lambda v: F.trim(v))  # not F.trim: 2 args = (v, i)
    return F.when(parsed.isNotNull(), parsed).otherwise(F.filter(parts, lambda v: v != ""))


def item_values(spark: SparkSession, config: Config, ds: str, attribute: str) -> DataFrame | None:
    """``(item_id, _value)``: one row per item and value of ``attribute`` in the catalogue as
    of ``ds``; None without a catalogue."""
    day = snapshot_ds(config.root, ITEMS, ds)
    if day is None:
        return None
    items = Lake(config.root).read(spark, ITEMS, [{DS: day}])
    values = attribute_values(F.col(ATTRIBUTES).getItem(attribute))
    return items.select(
        ITEM_ID,
        F.explode(F.when(F.size(values) > 0, values).otherwise(F.array(F.lit(NO_VALUE)))).alias(
            _VALUE
        ),
    )


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


def catalogue_mix(
    spark: SparkSession, config: Config, ds: str, recommended: DataFrame, history: DataFrame
) -> dict[str, Any] | None:
    """{attribute, catalogue_ds, recommended, history}: value counts of both frames (each with
    an ``item_id`` column); None without a catalogue or with ``catalog.mix_attribute`` unset."""
    attribute = config.catalog.mix_attribute
    if not attribute:
        return None
    values = item_values(spark, config, ds, attribute)
    if values is None:
        return None
    values = F.broadcast(values)  # item-sized: every executor joins against it locally
    return {
        "attribute": attribute,
        "catalogue_ds": snapshot_ds(config.root, ITEMS, ds),
        "recommended": value_counts(recommended, values),
        "history": value_counts(history, values),
    }
