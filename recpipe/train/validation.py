"""Early-stopping metric: the evaluation library on the valid split (full ranking), over a
seeded sample of valid users so that its cost and memory stay bounded however many there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from recpipe.baselines.base import Baseline
from recpipe.errors import MissingInputError
from recpipe.evaluation.metrics import ranking_metrics
from recpipe.evaluation.ranking import Csr, csr_from_pairs, top_k, users_per_block
from recpipe.layout import VOCAB_ITEMS
from recpipe.models.base import RecModel
from recpipe.schema import ITEM_IDX
from recpipe.scoring.histories import UserHistories
from recpipe.scoring.scorers import dense_evaluation_scorer
from recpipe.tables import (
    split_presence,
    split_rows,
    split_rows_of_users,
    split_users,
    vocab_size,
)


def sample_users(users: np.ndarray, max_users: int | None, seed: int) -> np.ndarray:
    """Sorted ``users``, or a seeded uniform sample of ``max_users`` of them (same seed and
    users: same sample, on any machine)."""
    users = np.asarray(users, dtype=np.int64)
    if max_users is None or len(users) <= max_users:
        return users
    chosen = np.random.default_rng(seed).choice(len(users), size=max_users, replace=False)
    return np.sort(users[chosen])


@dataclass(frozen=True)
class ValidData:
    """What validation reads, indexed by position in ``users`` (the sampled valid users):
    their train histories, seen items and true items."""

    users: np.ndarray  # sorted user indexes
    valid_users: int  # valid users before sampling
    histories: UserHistories  # row i: users[i]'s train items, oldest first
    seen: Csr
    truth: Csr
    n_items: int


@dataclass
class Validator:
    """Scores a model on ``protocol``'s valid split with train items excluded, over at most
    ``max_users`` valid users drawn with ``seed`` (``None``: all of them).

    Construction reads nothing; the splits are read on first use (:attr:`data`), streamed:
    only the sampled users' rows are kept.
    """

    root: str  # paths.root: a local path or a URI
    ds: str
    protocol: str
    metric: str = "ndcg"
    k: int = 10
    user_batch: int = 1024
    max_users: int | None = 10_000
    seed: int = 0
    block_mib: int = 256  # evaluation.block_mib: dense score rows per block
    # Bool [n_items + 1] items with a train row, when the caller knows them (training: from
    # the train stage's item counts); else streamed from the train split on first use.
    known_items: np.ndarray | None = None

    @cached_property
    def data(self) -> ValidData:
        """The sampled users' train and valid rows, read once."""
        # The train split first: a missing one is the error worth reporting (footers only).
        split_rows(self.root, self.ds, self.protocol, "train")
        try:
            valid_users = split_users(self.root, self.ds, self.protocol, "valid")
        except MissingInputError:  # protocols configured without a valid part
            valid_users = np.zeros(0, dtype=np.int64)
        users = sample_users(valid_users, self.max_users, self.seed)
        train = split_rows_of_users(self.root, self.ds, self.protocol, "train", users)
        valid = (
            split_rows_of_users(self.root, self.ds, self.protocol, "valid", users)
            if len(users)
            else train
        )
        train_rows = np.searchsorted(users, train[0])
        histories = UserHistories.from_events(
            train_rows, train[1], train[2], distinct=False, n_users=len(users)
        )
        return ValidData(
            users=users,
            valid_users=len(valid_users),
            histories=UserHistories(users, histories.lengths, histories.items),
            seen=csr_from_pairs(train_rows, train[1], len(users)),
            truth=csr_from_pairs(np.searchsorted(users, valid[0]), valid[1], len(users)),
            n_items=vocab_size(self.root, VOCAB_ITEMS, ITEM_IDX, self.ds),
        )

    @property
    def usable(self) -> bool:
        """False when the protocol has no valid rows (then training runs its full epochs)."""
        return len(self.data.users) > 0

    def describe(self) -> str:
        """The protocol in words, for logs and the manifest."""
        data = self.data
        sampled = ""
        if len(data.users) < data.valid_users:
            sampled = f" (seeded sample of {data.valid_users} valid users, seed {self.seed})"
        return (
            f"{self.metric}@{self.k} on {self.protocol}/valid, full ranking over all items, "
            f"train items excluded, {len(data.users)} users{sampled}"
        )

    def evaluate(self, model: RecModel | Baseline, device: str = "cpu") -> float:
        """The metric for ``model`` (put in eval mode; the caller restores train mode)."""
        data = self.data
        # Every user is ranked, so no trained-user mask; known items are every train item,
        # not only the sampled users' ones.
        scorer = dense_evaluation_scorer(
            model, self._trained_items(), np.zeros(0, dtype=bool), device
        )
        positions = np.arange(len(data.users))
        items, _ = top_k(
            lambda rows: scorer.score_rows(data.histories.take(rows)),
            positions,
            self.k,
            data.n_items,
            data.seen,
            batch=users_per_block(
                data.n_items, self.user_batch, self.block_mib, "evaluation.block_mib"
            ),
        )
        values = ranking_metrics(items, data.truth, positions, [self.k])
        return float(values[(self.metric, self.k)])

    def _trained_items(self) -> np.ndarray:
        """Bool [n_items + 1]: items with a train row, streamed once and kept."""
        if self.known_items is None:
            _, self.known_items = split_presence(self.root, self.ds, self.protocol, "train")
        known = np.asarray(self.known_items, dtype=bool).copy()
        known[0] = False  # padding
        return known
