"""Pure transforms of the ``features`` stage: declared specs -> per-key feature columns.

One catalogue snapshot (``items`` or ``users``) becomes one row per key holding every declared
feature (see :mod:`recpipe.feature_specs`): categorical -> int, multi and text -> array<int>
padded with 0 to a fixed width, numeric -> float (standardize, raw) or int (bucketize).
Categorical and multi-valued features index their values through ``feature_vocab``, which only
grows: a value keeps its index forever, new values are numbered after the largest index in
order of (rows desc, value), and values seen on fewer than ``min_count`` rows map to
:data:`~recpipe.feature_specs.OOV_INDEX` until they reach it.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recpipe.config import ConfigError
from recpipe.etl.vocab import POSITION, number_in_order
from recpipe.feature_specs import (
    FIRST_VALUE_INDEX,
    MISSING_INDEX,
    OOV_INDEX,
    CategoricalSpec,
    MultiSpec,
    NumericSpec,
    TextSpec,
    source_field,
)
from recpipe.schema import ATTRIBUTES, TITLE
from recpipe.spark import one_row

Spec = CategoricalSpec | MultiSpec | NumericSpec | TextSpec

# feature_vocab's columns (partition ds): one row per (entity, feature, value).
ENTITY_COL = "entity"
FEATURE = "feature"
FEATURE_VALUE = "value"
VALUE_INDEX = "value_index"
VALUE_FIRST_DS = "first_seen_ds"
VOCAB_COLUMNS = (ENTITY_COL, FEATURE, FEATURE_VALUE, VALUE_INDEX, VALUE_FIRST_DS)
_ROWS = "_rows"
_POS = "_pos"
_RAW = "_raw"
# Java regex: anything but letters and digits separates tokens (Python: [\W_]+).
TOKEN_SEPARATOR = r"[^\p{L}\p{N}]+"


def raw_field(name: str, spec: Spec, entity: str) -> Column:
    """The feature's raw string: the ``title`` column (items) or an ``attributes`` entry,
    trimmed, blank as null."""
    source = source_field(name, spec)
    column = F.col(TITLE) if entity == "items" and source == TITLE else F.col(ATTRIBUTES)[source]
    trimmed = F.trim(column)
    return F.when(trimmed != "", trimmed)


def fields_present(catalogue: DataFrame, entity: str) -> set[str]:
    """Every field some row of the catalogue holds (attribute names, and title for items)."""
    names = {
        row[0] for row in catalogue.select(F.explode(F.map_keys(ATTRIBUTES))).distinct().collect()
    }
    titled = entity == "items" and TITLE in catalogue.columns
    if titled and catalogue.where(F.col(TITLE).isNotNull()).limit(1).count():
        names.add(TITLE)
    return names


def check_fields(
    specs: dict[str, Spec], present: set[str], entity: str, table: str, ds: str
) -> None:
    """A spec whose field no row holds is a typo or the wrong data set: a config error."""
    for name, spec in specs.items():
        source = source_field(name, spec)
        if source not in present:
            known = ", ".join(sorted(present)) or "none"
            key = f"features.{entity}.{name}" + (".field" if spec.field else "")
            raise ConfigError(
                f"'{key}': no row of {table} (ds={ds}) has a field '{source}' (fields: {known})"
            )


def value_lists(frame: DataFrame, key: str, name: str, spec: Spec, entity: str) -> DataFrame:
    """(key, _pos, value) for every value of a categorical or multi-valued feature."""
    raw = raw_field(name, spec, entity)
    if isinstance(spec, MultiSpec):
        # A JSON array's elements (how the catalogue keeps a list field), else separated text.
        listed = F.from_json(raw, T.ArrayType(T.StringType()))
        split = F.split(raw, _java_literal(spec.separator))
        parts = F.when(listed.isNotNull(), listed).otherwise(split)
        trimmed = F.filter(F.transform(parts, lambda v: F.trim(v)), lambda v: v != "")
        # A value listed twice in one row counts once, at its first place.
        values = F.array_distinct(trimmed)
    else:
        values = F.array(raw)
    return frame.select(key, F.posexplode(values).alias(_POS, FEATURE_VALUE)).where(
        F.col(FEATURE_VALUE).isNotNull()
    )


def _java_literal(text: str) -> str:
    """``text`` quoted for a Java regex."""
    return r"\Q" + text + r"\E"


def extend_values(
    values: DataFrame,
    existing: DataFrame | None,
    *,
    entity: str,
    name: str,
    min_count: int,
    ds: str,
) -> tuple[DataFrame, int]:
    """The feature's vocabulary after adding today's values seen on ``min_count`` rows or more,
    and how many were new. Existing rows are returned unchanged."""
    counted = (
        values.groupBy(FEATURE_VALUE)
        .agg(F.count_distinct(values.columns[0]).alias(_ROWS))
        .where(F.col(_ROWS) >= min_count)
    )
    start = FIRST_VALUE_INDEX
    if existing is not None:
        largest = one_row(existing.agg(F.max(VALUE_INDEX)), f"{name} vocabulary")[0]
        start = max(start, (largest or 0) + 1)
        counted = counted.join(existing.select(FEATURE_VALUE), FEATURE_VALUE, "left_anti")
    ordered = counted.select(FEATURE_VALUE, (-F.col(_ROWS)).alias(_ROWS))
    numbered = number_in_order(ordered, [_ROWS, FEATURE_VALUE], start).select(
        F.lit(entity).alias(ENTITY_COL),
        F.lit(name).alias(FEATURE),
        FEATURE_VALUE,
        F.col(POSITION).cast("int").alias(VALUE_INDEX),
        F.lit(ds).alias(VALUE_FIRST_DS),
    )
    new = numbered.count()
    if existing is None:
        return numbered, new
    return existing.select(*VOCAB_COLUMNS).unionByName(numbered), new


def indexed_lists(values: DataFrame, vocabulary: DataFrame, key: str, size: int) -> DataFrame:
    """(key, indexes): each row's values as vocabulary indexes (OOV for unknown values), in
    their listed order, cut or padded with 0 to ``size``; rows without values are absent."""
    joined = values.join(
        vocabulary.select(FEATURE_VALUE, VALUE_INDEX), FEATURE_VALUE, "left"
    ).select(key, _POS, F.coalesce(VALUE_INDEX, F.lit(OOV_INDEX)).alias(VALUE_INDEX))
    ordered = F.array_sort(F.collect_list(F.struct(_POS, VALUE_INDEX)))
    return joined.groupBy(key).agg(
        _padded(F.transform(ordered, lambda s: s[VALUE_INDEX]), size).alias("indexes"),
        F.size(ordered).alias("_count"),
        F.sum(F.when(F.col(VALUE_INDEX) == OOV_INDEX, 1).otherwise(0)).alias("_oov"),
    )


def _padded(indexes: Column, size: int) -> Column:
    """The first ``size`` indexes, padded with :data:`MISSING_INDEX` to exactly ``size``."""
    head = F.slice(indexes, 1, size)
    padding = F.array_repeat(F.lit(MISSING_INDEX), F.lit(size) - F.size(head))
    return F.concat(head, padding)


def token_indexes(raw: Column, spec: TextSpec) -> Column:
    """Lower-cased word tokens hashed to 1..hash_buckets (crc32), padded to ``max_tokens``;
    all 0 when the text is missing."""
    tokens = F.filter(F.split(F.lower(raw), TOKEN_SEPARATOR), lambda t: t != "")
    hashed = F.transform(
        tokens, lambda t: F.pmod(F.crc32(F.encode(t, "UTF-8")), F.lit(spec.hash_buckets)) + 1
    )
    hashed = F.transform(hashed, lambda h: h.cast("int"))
    empty = F.array_repeat(F.lit(MISSING_INDEX), spec.max_tokens)
    return F.coalesce(_padded(hashed, spec.max_tokens), empty)


def token_count(raw: Column) -> Column:
    """How many tokens the text holds (0 when missing)."""
    tokens = F.filter(F.split(F.lower(raw), TOKEN_SEPARATOR), lambda t: t != "")
    return F.coalesce(F.size(tokens), F.lit(0))


def parsed_number(raw: Column) -> Column:
    """The raw value as a finite double, else null."""
    number = raw.try_cast("double")
    return F.when(~F.isnan(number) & (F.abs(number) != float("inf")), number)


def quantile_edges(frame: DataFrame, number: str, buckets: int) -> list[float]:
    """Distinct interior quantile edges (exact, linearly interpolated) of ``number``."""
    if buckets < 2:
        return []
    fractions = [i / buckets for i in range(1, buckets)]
    row = one_row(frame.agg(F.percentile(number, fractions)), "quantile edges")
    return sorted(set(row[0] or []))


def bucket_of(number: Column, edges: list[float]) -> Column:
    """1 + how many edges ``number`` reaches; 0 when it is missing."""
    reached = sum((F.when(number >= F.lit(edge), 1).otherwise(0) for edge in edges), F.lit(0))
    return F.when(number.isNull(), F.lit(0)).otherwise(reached + 1).cast("int")
