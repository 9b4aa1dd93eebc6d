"""Event context as indexes: what ``features.context`` declares, read from each event itself.

A sample's context is its own event's (the device it came from, the hour it happened), so it
is known at the sample's time and nothing is joined from another moment. Categorical fields
are looked up in ``feature_vocab`` (entity ``context``): a value it lacks is out of vocabulary,
an event without the field is missing (0). Time parts come from the UTC ``ts``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from recpipe.etl.features import ENTITY_COL, FEATURE, FEATURE_VALUE, VALUE_INDEX
from recpipe.feature_specs import (
    CONTEXT,
    MISSING_INDEX,
    OOV_INDEX,
    CategoricalSpec,
    TimeSpec,
    source_field,
)
from recpipe.schema import CONTEXT as CONTEXT_MAP
from recpipe.schema import CONTEXT_IDX, TS

ContextSpecs = dict[str, CategoricalSpec | TimeSpec]
_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday: Monday is 0


def time_index(ts: Column, part: str) -> Column:
    """1 + the hour (0-23) or 1 + the weekday (Monday 0 .. Sunday 6) of ``ts`` in UTC,
    whatever the session time zone; 0 when ``ts`` is null."""
    seconds = F.unix_seconds(ts)
    if part == "hour":
        value = F.pmod(F.floor(seconds / 3600), F.lit(24))
    else:
        value = F.pmod(F.floor(seconds / _SECONDS_PER_DAY) + _EPOCH_WEEKDAY, F.lit(7))
    return F.coalesce((value + 1).cast("int"), F.lit(MISSING_INDEX))


def with_context_indexes(
    events: DataFrame, specs: ContextSpecs, vocab: DataFrame | None
) -> DataFrame:
    """``events`` (with ``ts`` and the ``context`` map) plus ``context_idx``: one index per
    declared feature, in declaration order."""
    columns: list[Column] = []
    out = events
    for position, (name, spec) in enumerate(specs.items()):
        if isinstance(spec, TimeSpec):
            columns.append(time_index(F.col(TS), spec.part))
            continue
        raw = F.trim(F.col(CONTEXT_MAP)[source_field(name, spec)])
        value, index = f"_ctx_value_{position}", f"_ctx_index_{position}"
        out = out.withColumn(value, F.when(raw != "", raw))
        known = (
            vocab.where((F.col(ENTITY_COL) == CONTEXT) & (F.col(FEATURE) == name)).select(
                F.col(FEATURE_VALUE).alias(value), F.col(VALUE_INDEX).alias(index)
            )
            if vocab is not None
            else None
        )
        if known is None:
            out = out.withColumn(index, F.lit(None).cast("int"))
        else:  # the vocabulary is small (distinct values): broadcast it
            out = out.join(F.broadcast(known), value, "left")
        columns.append(
            F.when(F.col(value).isNull(), F.lit(MISSING_INDEX))
            .otherwise(F.coalesce(F.col(index), F.lit(OOV_INDEX)))
            .cast("int")
        )
    helpers = [c for c in out.columns if c.startswith("_ctx_")]
    return out.withColumn(CONTEXT_IDX, F.array(*columns)).drop(*helpers)
