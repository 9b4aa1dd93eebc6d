"""Sequence models that score the next item by a dot product with their item table."""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import NextItemConfig
from recpipe.models.base import RecModel
from recpipe.models.losses import causal_targets, next_item_loss


class NextItemModel(RecModel):
    """A vector per history position (:meth:`sequence_output`) scored against ``item_emb``.

    Every real position trains on its next item with ``config.loss``; a user's query is the
    vector at the last (most recent) position.
    """

    sample_kind: ClassVar[SampleKind] = "sequence"
    config: NextItemConfig
    item_emb: nn.Embedding
    item_counts: torch.Tensor  # buffer registered by the subclass (train counts, for log-Q)

    @abstractmethod
    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """Per-position vectors [B, L, dim] aligned with ``history`` (0 at padding)."""

    def model_history(self, batch: Batch) -> torch.Tensor:
        """The part of the batch's history the model reads (all of it by default)."""
        return batch.require("history")

    def loss(self, batch: Batch) -> torch.Tensor:
        """Next-item loss (``config.loss``) over every real history position."""
        history = self.model_history(batch)
        targets, train = causal_targets(history, batch.require("items"))
        hidden = self.sequence_output(history)[train]
        return next_item_loss(
            self.config.loss, hidden, self.item_emb.weight, targets[train], self.item_counts
        )

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """[B, dim] the vector at the last (most recent) position."""
        return self.sequence_output(self.model_history(batch))[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, dim] the item table."""
        return self.item_emb.weight

    def score_all(self, batch: Batch) -> torch.Tensor:
        """Scores of every item after the last history item, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
