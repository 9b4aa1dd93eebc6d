"""Early-stopping metric: the evaluation library on the valid split (full ranking)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recpipe.errors import MissingInputError
from recpipe.evaluation.metrics import ranking_metrics
from recpipe.evaluation.ranking import csr_from_pairs, top_k
from recpipe.models.base import RecModel
from recpipe.scoring.deep import DeepScorer
from recpipe.tables import load_split


@dataclass
class Validator:
    """Scores a model on ``protocol``'s valid split with train items excluded."""

    root: str
    ds: str
    protocol: str
    metric: str = "ndcg"
    k: int = 10
    user_batch: int = 1024

    def __post_init__(self) -> None:
        self.train = load_split(Path(self.root), self.ds, self.protocol, "train")
        try:
            valid = load_split(Path(self.root), self.ds, self.protocol, "valid")
        except MissingInputError:  # protocols configured without a valid part
            valid = load_split(Path(self.root), self.ds, self.protocol, "train")
            valid.users, valid.items = valid.users[:0], valid.items[:0]
        self.users = np.unique(valid.users)
        self.seen = csr_from_pairs(self.train.users, self.train.items, self.train.n_users)
        self.truth = csr_from_pairs(valid.users, valid.items, self.train.n_users)

    @property
    def usable(self) -> bool:
        """False when the protocol has no valid rows (then training runs its full epochs)."""
        return len(self.users) > 0

    def describe(self) -> str:
        """The protocol in words, for logs and the manifest."""
        return (
            f"{self.metric}@{self.k} on {self.protocol}/valid, full ranking over all items, "
            f"train items excluded, {len(self.users)} users"
        )

    def evaluate(self, model: RecModel, device: str = "cpu") -> float:
        """The metric for ``model`` (put in eval mode; the caller restores train mode)."""
        scorer = DeepScorer.for_train_data(model, self.train, device)
        items, _ = top_k(
            scorer.score, self.users, self.k, self.train.n_items, self.seen, batch=self.user_batch
        )
        values = ranking_metrics(items, self.truth, self.users, [self.k])
        return float(values[(self.metric, self.k)])
