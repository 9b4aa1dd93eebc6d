"""Quality by user activity: does a model serve light users as well as heavy ones?

A user's activity is the number of interactions in the known history the evaluation used
(train, plus valid when test is scored). The cuts are the 25th, 50th and 75th percentiles of
the evaluated users' activity (linear interpolation: numpy's default and Spark's
``percentile``, so both engines cut alike); a user's group is the number of cuts strictly
below their activity, so group 1 holds the least active quarter and group 4 the most active
(ties at a cut stay in the lower group, so groups can differ in size). A group's value of a
metric is the mean over its users, the same per-user values the overall mean averages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

QUANTILES: tuple[float, ...] = (0.25, 0.5, 0.75)
N_GROUPS = len(QUANTILES) + 1


@dataclass(frozen=True)
class ActivityGroup:
    """One activity quartile: its users, their activity range and mean metrics."""

    users: int
    activity_low: int | None  # None for an empty group
    activity_high: int | None
    values: dict[tuple[str, int], float]


@dataclass(frozen=True)
class ActivityGroups:
    """The quartile cuts and the groups, least active first."""

    cuts: tuple[float, ...]
    groups: tuple[ActivityGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        """The manifest record: cuts and, per group, users, activity range and metrics."""
        return {
            "rule": "users split at the 25/50/75th percentiles of known-history length",
            "cuts": [round(cut, 6) for cut in self.cuts],
            "groups": [
                {
                    "group": number,
                    "users": group.users,
                    "activity": [group.activity_low, group.activity_high],
                    "metrics": {f"{m}@{k}": v for (m, k), v in sorted(group.values.items())},
                }
                for number, group in enumerate(self.groups, start=1)
            ],
        }

    def label(self, index: int) -> str:
        """``Q1 (3-17 items, 236 users)``: a group as charts and tables name it."""
        group = self.groups[index]
        span = (
            "no users"
            if group.activity_low is None
            else f"{group.activity_low}-{group.activity_high} items, {group.users:,} users"
        )
        return f"Q{index + 1} ({span})"


def activity_cuts(activity: np.ndarray) -> np.ndarray:
    """The quartile cuts of ``activity`` (NaN without users)."""
    if activity.size == 0:
        return np.full(len(QUANTILES), np.nan)
    return np.percentile(activity.astype(np.float64), [100 * q for q in QUANTILES])


def group_of(activity: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """0-based group of each activity: how many cuts lie strictly below it."""
    return (activity[:, None] > cuts[None, :]).sum(axis=1)


def activity_groups(
    activity: np.ndarray, per_user: Mapping[tuple[str, int], np.ndarray]
) -> ActivityGroups:
    """Groups of the evaluated users: ``activity[i]`` and ``per_user[key][i]`` belong to the
    same user (the order :func:`~recpipe.evaluation.metrics.per_user_ranking_metrics` gives)."""
    activity = np.asarray(activity, dtype=np.int64)
    cuts = activity_cuts(activity)
    groups = group_of(activity, cuts)
    built = []
    for number in range(N_GROUPS):
        members = groups == number
        count = int(members.sum())
        values = {
            key: float(column[members].mean()) if count else float("nan")
            for key, column in per_user.items()
        }
        low = int(activity[members].min()) if count else None
        high = int(activity[members].max()) if count else None
        built.append(ActivityGroup(count, low, high, values))
    return ActivityGroups(tuple(float(c) for c in cuts), tuple(built))
