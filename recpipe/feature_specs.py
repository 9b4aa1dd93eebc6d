"""Declared feature specs: what the ``features`` stage builds from the catalogue's fields.

``features.items`` and ``features.users`` map a feature name to one spec, its ``kind`` one of:

- ``categorical``: one value -> a stable index (values keep their index day after day, new
  values get the next ones, like ``vocab``); ``min_count`` rows needed to enter the vocabulary.
- ``multi``: a list of values (a JSON array, as the catalogue keeps a list field, or
  ``separator``-joined text) -> up to ``max_values`` stable indexes, padded with 0.
- ``numeric``: a number -> standardised (``standardize``: (x - mean) / std of the day's rows),
  bucketised into ``buckets`` quantile buckets (``bucketize``: 1..buckets) or kept (``raw``).
- ``text``: lower-cased word tokens -> up to ``max_tokens`` hashed indexes 1..hash_buckets.

Index 0 always means "no value" (missing, or padding); :data:`OOV_INDEX` is a value outside the
vocabulary (too rare, or first seen after the model was trained). ``field`` names the record
field (an attribute, or ``title`` for items); it defaults to the feature's name.

``features.context`` declares features of the event itself (what a sample knows at its own
time, so nothing is joined from another moment):

- ``categorical``: a field of the event's ``extra`` map (e.g. ``device``) -> a stable index.
- ``time``: a part of the event's UTC ``ts``: ``hour`` (0-23 -> index 1-24) or ``weekday``
  (Monday..Sunday -> index 1-7).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MISSING_INDEX = 0
OOV_INDEX = 1
FIRST_VALUE_INDEX = 2  # categorical and multi-valued values are numbered from here
NUMERIC_MISSING_BUCKET = 0


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str | None = Field(
        None, min_length=1, description="Record field read (default: the feature's name)."
    )


class CategoricalSpec(_Spec):
    kind: Literal["categorical"]
    min_count: int = Field(1, ge=1, description="Rows a value needs to get its own index.")


class MultiSpec(_Spec):
    kind: Literal["multi"]
    min_count: int = Field(1, ge=1)
    max_values: int = Field(8, ge=1, le=256, description="Values kept per row (padded).")
    separator: str = Field("|", min_length=1)


class NumericSpec(_Spec):
    kind: Literal["numeric"]
    transform: Literal["standardize", "bucketize", "raw"] = "standardize"
    buckets: int = Field(10, ge=2, le=1000, description="Quantile buckets of ``bucketize``.")


class TextSpec(_Spec):
    kind: Literal["text"]
    hash_buckets: int = Field(4096, ge=2, le=1 << 24)
    max_tokens: int = Field(16, ge=1, le=1024)


class TimeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["time"]
    part: Literal["hour", "weekday"] = Field(description="Which part of the event's UTC ts.")


# Indexes a time part may hold (0 missing, then one per value).
TIME_SIZES = {"hour": 25, "weekday": 8}

FeatureSpec = Annotated[
    CategoricalSpec | MultiSpec | NumericSpec | TextSpec, Field(discriminator="kind")
]
FeatureKind = Literal["categorical", "multi", "numeric", "text"]
SPEC_CLASSES: dict[str, type[BaseModel]] = {
    "categorical": CategoricalSpec,
    "multi": MultiSpec,
    "numeric": NumericSpec,
    "text": TextSpec,
    "time": TimeSpec,
}
ContextSpec = Annotated[CategoricalSpec | TimeSpec, Field(discriminator="kind")]
ENTITIES: tuple[str, ...] = ("items", "users")
CONTEXT = "context"  # the layout's and feature_vocab's entity of event context features


def source_field(name: str, spec: CategoricalSpec | MultiSpec | NumericSpec | TextSpec) -> str:
    """The record field feature ``name`` reads."""
    return spec.field or name


def context_event_fields(specs: dict[str, CategoricalSpec | TimeSpec]) -> list[str]:
    """The event fields the declared context features read (time parts read ``ts``)."""
    return [
        source_field(name, spec)
        for name, spec in specs.items()
        if isinstance(spec, CategoricalSpec)
    ]


def width(spec: CategoricalSpec | MultiSpec | NumericSpec | TextSpec) -> int:
    """Indexes per row of a list-valued feature (multi, text); 1 for the others."""
    if isinstance(spec, MultiSpec):
        return spec.max_values
    if isinstance(spec, TextSpec):
        return spec.max_tokens
    return 1


def has_vocabulary(spec: CategoricalSpec | MultiSpec | NumericSpec | TextSpec) -> bool:
    """Whether the feature's values get stable indexes in ``feature_vocab``."""
    return isinstance(spec, CategoricalSpec | MultiSpec)
