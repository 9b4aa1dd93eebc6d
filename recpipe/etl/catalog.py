"""Pure transforms of the ``catalog`` stage: the reference inputs' contracts, checks and
de-duplication.

Four reference inputs describe what events only name by id. Each is read like the raw events
(JSON lines, CSV with a header or Parquet; the same id rendering and parse reasons, see
:mod:`recpipe.etl.sources`) and each record ends up in exactly one place:

* ``items`` (``paths.raw_items``): ``item_id`` required, ``title`` optional, any other field
  (genres, brand, price, text, ...) kept in the ``attributes`` map. One row per item.
* ``users`` (``paths.raw_users``): ``user_id`` required, any other field (age, gender,
  region, ...) in ``attributes``. One row per user.
* ``kg`` (``paths.raw_kg``): knowledge-graph triples ``head``, ``relation``, ``tail``, all
  required; other fields in ``attributes``. One row per distinct triple.
* ``links`` (``paths.raw_links``): ``item_id`` -> ``entity`` (a ``head``/``tail`` of the
  graph), both required. One row per item.

A record is quarantined with the first reason it fails: a parse reason, ``missing_<field>``
for a blank required field, ``id_too_long`` (a key field over ``clean.max_id_length``), or
``conflicting_record`` when its key has more than one distinct version in the input (every
record of such a key goes: recpipe never guesses which version is true). Exact copies of a
version collapse into one row and are counted as duplicates, so
``rows_in = rows_out + quarantined + duplicates`` holds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recpipe.etl.sources import PARSE_ERROR, RawContract
from recpipe.layout import ITEM_ENTITIES, ITEMS, KG_TRIPLES, USERS
from recpipe.schema import (
    ATTRIBUTES,
    ENTITY,
    EXTRA,
    HEAD,
    ITEM_ID,
    RAW,
    REASON,
    RELATION,
    SOURCE_FILE,
    TAIL,
    TITLE,
    USER_ID,
    Reason,
)

_CONTENT = "_content"
_VERSIONS = "_versions"
_FORMAT_KEY = "catalog.input_format"


@dataclass(frozen=True)
class ReferenceInput:
    """One reference input: its config key, contract, lake table and what identifies a record.

    ``key`` fields are required, trimmed and limited to ``clean.max_id_length``; ``values``
    are the other known fields (trimmed, blank is null), those in ``required_values`` must be
    there. Every other field is kept in ``attributes``.
    """

    name: str
    table: str
    key: tuple[str, ...]
    values: tuple[str, ...] = ()
    required_values: tuple[str, ...] = ()

    @property
    def path_key(self) -> str:
        """The config key naming the input's files."""
        return f"paths.raw_{self.name}"

    @property
    def contract(self) -> RawContract:
        """What the raw reader turns into columns."""
        known = (*self.key, *self.values)
        return RawContract(
            key=self.path_key, format_key=_FORMAT_KEY, known=known, ids=self.key,
            typed_ids=self.key,
        )  # fmt: skip

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns of the lake table."""
        return (*self.key, *self.values, ATTRIBUTES, SOURCE_FILE)


ITEMS_INPUT = ReferenceInput("items", ITEMS, key=(ITEM_ID,), values=(TITLE,))
USERS_INPUT = ReferenceInput("users", USERS, key=(USER_ID,))
KG_INPUT = ReferenceInput("kg", KG_TRIPLES, key=(HEAD, RELATION, TAIL))
LINKS_INPUT = ReferenceInput(
    "links", ITEM_ENTITIES, key=(ITEM_ID,), values=(ENTITY,), required_values=(ENTITY,)
)
REFERENCE_INPUTS: tuple[ReferenceInput, ...] = (ITEMS_INPUT, USERS_INPUT, KG_INPUT, LINKS_INPUT)


def missing_reason(field: str) -> str:
    """The quarantine reason of a blank required field (``missing_item_id``)."""
    return f"missing_{field}"


def _trimmed_or_null(col: Column) -> Column:
    trimmed = F.trim(col)
    return F.when(trimmed != "", trimmed)


def classify_reference(raw: DataFrame, spec: ReferenceInput, max_id_length: int) -> DataFrame:
    """Normalised raw rows with their quarantine ``reason`` (null when valid)."""
    required = (*spec.key, *spec.required_values)
    reason = F.when(F.col(PARSE_ERROR).isNotNull(), F.col(PARSE_ERROR))
    for name in required:
        reason = reason.when(_trimmed_or_null(F.col(name)).isNull(), F.lit(missing_reason(name)))
    too_long = F.lit(False)
    for name in spec.key:
        too_long = too_long | (F.length(F.trim(F.col(name))) > max_id_length)
    reason = reason.when(too_long, F.lit(Reason.ID_TOO_LONG))
    return raw.select(
        F.col(RAW),
        reason.alias(REASON),
        *(F.trim(F.col(name)).alias(name) for name in spec.key),
        *(_trimmed_or_null(F.col(name)).alias(name) for name in spec.values),
        F.col(EXTRA).alias(ATTRIBUTES),
        F.col(SOURCE_FILE),
    )


@dataclass
class ReferenceRows:
    """One input's distinct records and its quarantine, plus the counts behind them."""

    rows: DataFrame  # spec.columns, one row per key
    quarantine: DataFrame  # raw, reason, source_file
    duplicates: int  # valid records dropped as exact copies of a kept one
    conflicting: int  # valid records quarantined because their key has several versions
    _versions: DataFrame

    def release(self) -> None:
        """Drop the cached versions."""
        self._versions.unpersist()


def _content(spec: ReferenceInput) -> Column:
    """A record's content as one comparable value: maps cannot be grouped, sorted entries can."""
    return F.struct(
        *(F.col(name) for name in spec.values),
        F.array_sort(F.map_entries(F.col(ATTRIBUTES))).alias(ATTRIBUTES),
    )


def dedupe_reference(checked: DataFrame, spec: ReferenceInput) -> ReferenceRows:
    """Collapse exact copies per key; quarantine every record of a key with several versions.

    The kept row's ``source_file`` is the smallest of its copies', so re-runs give the same
    rows whatever the partitioning.
    """
    valid = checked.where(F.col(REASON).isNull())
    versions = (
        valid.groupBy(*spec.key, _content(spec).alias(_CONTENT))
        .agg(F.count(F.lit(1)).alias("copies"), F.min(SOURCE_FILE).alias(SOURCE_FILE))
        .withColumn(_VERSIONS, F.count(F.lit(1)).over(Window.partitionBy(*spec.key)))
        .persist()
    )
    totals = versions.agg(
        F.sum(F.when(F.col(_VERSIONS) == 1, F.col("copies") - 1)).alias("duplicates"),
        F.sum(F.when(F.col(_VERSIONS) > 1, F.col("copies"))).alias("conflicting"),
    ).collect()[0]
    kept = versions.where(F.col(_VERSIONS) == 1).select(
        *spec.key,
        *(F.col(f"{_CONTENT}.{name}").alias(name) for name in spec.values),
        F.map_from_entries(F.col(f"{_CONTENT}.{ATTRIBUTES}")).alias(ATTRIBUTES),
        F.col(SOURCE_FILE),
    )
    conflicted_keys = versions.where(F.col(_VERSIONS) > 1).select(*spec.key).distinct()
    conflicts = valid.join(conflicted_keys, list(spec.key), "left_semi").select(
        F.col(RAW), F.lit(Reason.CONFLICTING_RECORD).alias(REASON), F.col(SOURCE_FILE)
    )
    rejected = checked.where(F.col(REASON).isNotNull()).select(RAW, REASON, SOURCE_FILE)
    return ReferenceRows(
        rows=kept,
        quarantine=rejected.unionByName(conflicts),
        duplicates=int(totals["duplicates"] or 0),
        conflicting=int(totals["conflicting"] or 0),
        _versions=versions,
    )


def reconcile_reference(
    spec: ReferenceInput,
    by_reason: dict[str | None, int],
    deduped: ReferenceRows,
    rows_out: int,
    quarantined: dict[str, int],
) -> str | None:
    """What does not add up for one input (None when all does).

    ``by_reason`` counts the parsed records (``None``: valid), ``rows_out`` and ``quarantined``
    are read back from the staged partitions.
    """
    rows_in = sum(by_reason.values())
    expected = {k: v for k, v in by_reason.items() if k is not None}
    if deduped.conflicting:
        expected[Reason.CONFLICTING_RECORD] = deduped.conflicting
    problems = []
    total_quarantined = sum(quarantined.values())
    if rows_in != rows_out + total_quarantined + deduped.duplicates:
        problems.append(
            f"rows_in {rows_in} != rows_out {rows_out} + quarantined {total_quarantined} + "
            f"duplicates {deduped.duplicates}"
        )
    if {k: v for k, v in quarantined.items() if v} != expected:
        problems.append(f"quarantine by reason {quarantined} != expected {expected}")
    if not problems:
        return None
    return f"catalog input {spec.name} did not reconcile: " + "; ".join(problems)
