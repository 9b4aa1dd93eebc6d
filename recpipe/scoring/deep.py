"""Score users with a trained deep model, the same way for validation, evaluation and scoring."""

from __future__ import annotations

import numpy as np
import torch

from recpipe.baselines.base import known_items_mask
from recpipe.data.batch import Batch
from recpipe.models.base import RecModel
from recpipe.scoring.histories import UserHistories
from recpipe.tables import TrainData


def build_histories(data: TrainData, max_len: int) -> np.ndarray:
    """[n_users, max_len] int64: each user's last ``max_len`` train items ordered by (ts, item),
    left-padded with 0 (the layout of the export stage's sequence samples)."""
    built = UserHistories.from_events(data.users, data.items, data.ts, distinct=False)
    histories = np.zeros((data.n_users, max_len), dtype=np.int64)
    every_item = np.ones(data.n_items + 1, dtype=bool)
    histories[built.users] = built.recent(max_len, every_item)
    return histories


class DeepScorer:
    """Scores [n, n_items + 1] for users; padding and items never seen in training get -inf."""

    def __init__(
        self,
        model: RecModel,
        histories: np.ndarray | None,
        known_items: np.ndarray,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model.eval().to(device)
        self.histories = histories
        self.known_items = known_items
        self.device = torch.device(device)
        self.n_items = model.n_items

    @classmethod
    def for_train_data(
        cls, model: RecModel, train: TrainData, device: torch.device | str = "cpu"
    ) -> DeepScorer:
        """A scorer whose users' histories and known items come from ``train``."""
        histories = (
            build_histories(train, model.context.max_len)
            if model.sample_kind == "sequence"
            else None
        )
        return cls(model, histories, known_items_mask(train), device)

    def batch(self, users: np.ndarray) -> Batch:
        """The scoring batch of ``users`` (with their histories for sequence models)."""
        history = None
        if self.histories is not None:
            history = torch.as_tensor(self.histories[users])
        return Batch(users=torch.as_tensor(users, dtype=torch.int64), history=history).to(
            self.device
        )

    @torch.no_grad()
    def score(self, users: np.ndarray) -> np.ndarray:
        """Scores of ``users`` against every item, float64 numpy (the evaluation contract)."""
        users = np.asarray(users, dtype=np.int64)
        scores = self.model.score_all(self.batch(users)).float().cpu().numpy().astype(np.float64)
        scores[:, ~self.known_items] = -np.inf
        return scores
