"""EASE: closed-form item-item linear model (Steck, "Embarrassingly Shallow Autoencoders for
Sparse Data", WWW 2019): B = I - P / diag(P) with P = (X^T X + l2 I)^-1, diag(B) = 0."""

from __future__ import annotations

from typing import Any

import numpy as np

from recpipe.baselines.base import Baseline, SplitFacts, base_meta, known_items_mask
from recpipe.config import EaseConfig
from recpipe.errors import RecpipeError
from recpipe.tables import TrainData


class CatalogueTooLargeError(RecpipeError):
    """EASE would need an items x items inverse larger than allowed."""


class Ease(Baseline):
    """Scores = binary user history x B."""

    name = "ease"

    @classmethod
    def fit(cls, data: TrainData | SplitFacts, settings: EaseConfig, **context: Any) -> Ease:
        if not isinstance(data, TrainData):
            raise TypeError("EASE is fitted in one process from the split's rows (TrainData)")
        if data.n_items > settings.max_items:
            gib = (data.n_items**2) * 8 / 2**30
            raise CatalogueTooLargeError(
                f"EASE on {data.n_items:,} items needs a dense {data.n_items:,}^2 inverse "
                f"(~{gib:.1f} GiB); baselines.ease.max_items is {settings.max_items:,}. Raise it "
                "if the driver has the memory, or use itemknn/als."
            )
        history = data.matrix()
        history.data[:] = 1.0
        gram = (history.T @ history).toarray()
        gram[np.diag_indices_from(gram)] += settings.l2
        inverse = np.linalg.inv(gram)
        weights = -inverse / np.diag(inverse)
        np.fill_diagonal(weights, 0.0)
        weights[0, :] = 0.0  # padding item
        arrays = {"weights": weights, "known_items": known_items_mask(data)}
        return cls(arrays, base_meta(data, settings))

    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.require_history()[users] @ self.arrays["weights"])
