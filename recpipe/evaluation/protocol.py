"""The evaluation protocol: which split is scored, against which candidates, with what masking."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from recpipe.config import EvaluationConfig

ALL_ITEMS = "all_items"
TRAIN_HISTORY = "train"
TRAIN_VALID_HISTORY = "train+valid"

# How each candidate set reads in a table title.
_CANDIDATE_TEXT = {ALL_ITEMS: "full ranking over all items"}


@dataclass(frozen=True)
class Protocol:
    """How a model was evaluated: split protocol, scored split, candidates, the user history
    the model reads (``train``; ``train+valid`` when the test split is scored, since a user's
    valid interactions came before it) and whether that history's items are masked."""

    split_protocol: str
    split: str
    candidates: str = ALL_ITEMS
    exclude_train_items: bool = True
    history: str = TRAIN_HISTORY

    @classmethod
    def from_config(cls, split_protocol: str, config: EvaluationConfig) -> Protocol:
        """The protocol that ``config`` (the ``evaluation`` section) describes for a split."""
        return cls(
            split_protocol=split_protocol,
            split=config.split,
            exclude_train_items=config.exclude_train_items,
            history=TRAIN_VALID_HISTORY if config.split == "test" else TRAIN_HISTORY,
        )

    def describe(self, k: int | None = None) -> str:
        """One line, e.g. ``random_by_user/test, full ranking over all items, train+valid items
        excluded, K=10``; the ``K=`` part only when ``k`` is given."""
        candidates = _CANDIDATE_TEXT.get(self.candidates, f"candidates: {self.candidates}")
        masked = "excluded" if self.exclude_train_items else "included"
        masking = f"{self.history} items {masked}"
        parts = [f"{self.split_protocol}/{self.split}", candidates, masking]
        if k is not None:
            parts.append(f"K={k}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields, for manifests and JSON reports."""
        return dataclasses.asdict(self)
