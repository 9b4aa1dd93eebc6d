"""Most-popular baseline: items ranked by distinct training users (all time or a recent window)."""

from __future__ import annotations

from typing import Any

import numpy as np

from recpipe.baselines.base import Baseline, base_meta, known_items_mask
from recpipe.config import PopularityConfig
from recpipe.tables import TrainData

DAY_SECONDS = 86_400


class Popularity(Baseline):
    """Scores every user with the item's count of distinct users (ties: smaller index first)."""

    name = "popularity"
    needs_history = False

    @classmethod
    def fit(cls, data: TrainData, settings: PopularityConfig, **context: Any) -> Popularity:
        keep = np.ones(len(data.users), dtype=bool)
        if settings.recent_days is not None and len(data.ts):
            keep = data.ts > data.ts.max() - settings.recent_days * DAY_SECONDS
        pairs = np.unique(np.stack([data.users[keep], data.items[keep]]), axis=1)
        counts = np.bincount(pairs[1], minlength=data.n_items + 1).astype(np.float64)
        arrays = {"counts": counts, "known_items": known_items_mask(data)}
        return cls(arrays, base_meta(data, settings))

    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.arrays["counts"], (len(users), self.n_items + 1)).copy()
