"""The profile groups of :mod:`recpipe.evaluation.segments`, built in Spark for the executor
engine: one ``(user_idx, attribute, label)`` row per profiled user and attribute."""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.catalogue import snapshot_ds
from recpipe.config import Config
from recpipe.evaluation.segments import UNKNOWN, band_names
from recpipe.lake import Lake
from recpipe.layout import USERS, VOCAB_USERS
from recpipe.schema import ATTRIBUTES, DS, USER_ID, USER_IDX

ATTRIBUTE = "attribute"
LABEL = "label"


def label_column(text: Column, edges: Sequence[float] | None) -> Column:
    """Spark's :func:`~recpipe.evaluation.segments.segment_label` of one attribute column."""
    blank = text.isNull() | (F.trim(text) == "")
    if not edges:
        return F.when(blank, F.lit(UNKNOWN)).otherwise(F.trim(text))
    number = F.trim(text).try_cast(T.DoubleType())
    band = sum(((number >= F.lit(float(edge))).cast("int") for edge in edges), F.lit(0))
    names = F.array(*(F.lit(name) for name in band_names(edges)))
    return F.when(blank | number.isNull() | F.isnan(number), F.lit(UNKNOWN)).otherwise(
        F.element_at(names, band + 1)
    )


def profile_segment_frame(spark: SparkSession, config: Config, ds: str) -> DataFrame | None:
    """``(user_idx, attribute, label)`` of every profiled user of ``vocab_users`` ds; None
    without profiles or without ``evaluation.profile_groups``."""
    attributes = config.evaluation.profile_groups
    day = snapshot_ds(config.root, USERS, ds)
    if not attributes or day is None:
        return None
    lake = Lake(config.root)
    vocab = lake.read(spark, VOCAB_USERS, [{DS: ds}]).select(USER_ID, USER_IDX)
    profiles = lake.read(spark, USERS, [{DS: day}]).select(USER_ID, ATTRIBUTES)
    joined = vocab.join(profiles, USER_ID)
    pairs = F.array(
        *(
            F.struct(
                F.lit(name).alias(ATTRIBUTE),
                label_column(
                    F.col(ATTRIBUTES).getItem(name), config.evaluation.profile_bands.get(name)
                ).alias(LABEL),
            )
            for name in attributes
        )
    )
    return joined.select(USER_IDX, F.explode(pairs).alias("_pair")).select(
        USER_IDX, F.col(f"_pair.{ATTRIBUTE}").alias(ATTRIBUTE), F.col(f"_pair.{LABEL}").alias(LABEL)
    )
