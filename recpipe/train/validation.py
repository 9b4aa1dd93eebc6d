"""Early-stopping metric: the evaluation library on the valid split (full ranking)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from recpipe.errors import MissingInputError
from recpipe.evaluation.metrics import ranking_metrics
from recpipe.evaluation.ranking import Csr, csr_from_pairs, top_k
from recpipe.models.base import RecModel
from recpipe.scoring.scorers import evaluation_scorer
from recpipe.tables import TrainData, load_split


@dataclass(frozen=True)
class ValidData:
    """What validation reads: the train split, the valid users, their seen and true items."""

    train: TrainData
    users: np.ndarray
    seen: Csr
    truth: Csr


@dataclass
class Validator:
    """Scores a model on ``protocol``'s valid split with train items excluded.

    Construction reads nothing; the splits are read on first use (:attr:`data`).
    """

    root: str  # paths.root: a local path or a URI
    ds: str
    protocol: str
    metric: str = "ndcg"
    k: int = 10
    user_batch: int = 1024

    @cached_property
    def data(self) -> ValidData:
        """The train and valid splits, read once."""
        train = load_split(self.root, self.ds, self.protocol, "train")
        try:
            valid = load_split(self.root, self.ds, self.protocol, "valid")
        except MissingInputError:  # protocols configured without a valid part
            valid = load_split(self.root, self.ds, self.protocol, "train")
            valid.users, valid.items = valid.users[:0], valid.items[:0]
        return ValidData(
            train=train,
            users=np.unique(valid.users),
            seen=csr_from_pairs(train.users, train.items, train.n_users),
            truth=csr_from_pairs(valid.users, valid.items, train.n_users),
        )

    @property
    def usable(self) -> bool:
        """False when the protocol has no valid rows (then training runs its full epochs)."""
        return len(self.data.users) > 0

    def describe(self) -> str:
        """The protocol in words, for logs and the manifest."""
        return (
            f"{self.metric}@{self.k} on {self.protocol}/valid, full ranking over all items, "
            f"train items excluded, {len(self.data.users)} users"
        )

    def evaluate(self, model: RecModel, device: str = "cpu") -> float:
        """The metric for ``model`` (put in eval mode; the caller restores train mode)."""
        data = self.data
        scorer = evaluation_scorer(model, data.train, device)
        items, _ = top_k(
            scorer.score, data.users, self.k, data.train.n_items, data.seen, batch=self.user_batch
        )
        values = ranking_metrics(items, data.truth, data.users, [self.k])
        return float(values[(self.metric, self.k)])
