"""Quality by user profile: does a model serve every gender and age band alike?

With user profiles (the catalog stage's ``users`` table), the evaluated users are grouped by
each attribute in ``evaluation.profile_groups``: by its value as written, or, for an attribute
with edges in ``evaluation.profile_bands``, by the band its number falls in (``<18``,
``18-24``, ..., ``56+`` for edges 18, 25, 35, 45, 56). A user without the attribute or with a
non-number where bands are asked for is ``(unknown)``; one missing from the profiles
``(no profile)``. A group's value of a metric is the mean over its users of the same per-user
values the overall mean averages; the Spark engine computes the same groups with
:func:`recpipe.evaluation.spark_metrics.spark_ranking_metrics` (``profiles``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from recpipe.catalogue import snapshot_ds, user_profiles
from recpipe.commit import current_version
from recpipe.config import Config
from recpipe.layout import USERS, VOCAB_USERS
from recpipe.parquet_files import verified_dataset
from recpipe.schema import DS, USER_ID, USER_IDX

UNKNOWN = "(unknown)"
NO_PROFILE = "(no profile)"


def band_names(edges: Sequence[float]) -> list[str]:
    """Names of the bands cut at ``edges`` (ascending): ``<e0``, ``e0-(e1-1)``, ..., ``eN+``."""

    def text(value: float) -> str:
        return f"{value:g}"

    names = [f"<{text(edges[0])}"] if edges else []
    for low, high in itertools.pairwise(edges):
        whole = float(low).is_integer() and float(high).is_integer()
        names.append(f"{text(low)}-{text(high - 1) if whole else text(high)}")
    if edges:
        names.append(f"{text(edges[-1])}+")
    return names


def segment_label(text: str | None, edges: Sequence[float] | None) -> str:
    """The group of one attribute value (see the module docstring)."""
    if text is None or not text.strip():
        return UNKNOWN
    if not edges:
        return text.strip()
    try:
        number = float(text)
    except ValueError:
        return UNKNOWN
    if math.isnan(number):
        return UNKNOWN
    return band_names(edges)[sum(number >= edge for edge in edges)]


@dataclass(frozen=True)
class Segment:
    """One group of users: how many, and their mean metrics."""

    users: int
    values: dict[tuple[str, int], float]


@dataclass(frozen=True)
class Segments:
    """The groups of one profile attribute, by label."""

    attribute: str
    groups: dict[str, Segment]

    def to_dict(self) -> dict[str, Any]:
        """The manifest record: per label, users and metrics."""
        return {
            label: {
                "users": group.users,
                "metrics": {f"{m}@{k}": v for (m, k), v in sorted(group.values.items())},
            }
            for label, group in sorted(self.groups.items())
        }


def profile_labels(config: Config, ds: str, user_idx: np.ndarray) -> dict[str, list[str]] | None:
    """attribute -> label of each of ``user_idx`` (JVM-free); None without profiles or
    without ``evaluation.profile_groups``."""
    attributes = config.evaluation.profile_groups
    if not attributes or snapshot_ds(config.root, USERS, ds) is None:
        return None
    vocab = verified_dataset(current_version(config.root, VOCAB_USERS, {DS: ds}))
    wanted = [int(i) for i in np.unique(user_idx)]
    table = vocab.to_table(columns=[USER_ID, USER_IDX], filter=pads.field(USER_IDX).isin(wanted))
    ids = dict(zip(table.column(USER_IDX).to_pylist(), table.column(USER_ID).to_pylist(),
                   strict=True))  # fmt: skip
    profiles = user_profiles(config.root, ds, ids.values())
    labels: dict[str, list[str]] = {}
    for attribute in attributes:
        edges = config.evaluation.profile_bands.get(attribute)
        column = []
        for index in user_idx:
            profile = profiles.get(ids.get(int(index), ""))
            column.append(
                NO_PROFILE if profile is None else segment_label(profile.get(attribute), edges)
            )
        labels[attribute] = column
    return labels


def local_segments(
    labels: Mapping[str, Sequence[str]], per_user: Mapping[tuple[str, int], np.ndarray]
) -> list[Segments]:
    """Group means of ``per_user`` (one value per evaluated user, in ``labels``' order)."""
    built = []
    for attribute, column in labels.items():
        names = np.asarray(column, dtype=object)
        groups = {}
        for label in sorted(set(column)):
            members = names == label
            groups[label] = Segment(
                int(members.sum()),
                {key: float(values[members].mean()) for key, values in per_user.items()},
            )
        built.append(Segments(attribute, groups))
    return built
