"""NFM: neural factorisation machine, bi-interaction pooling under a multi-layer perceptron.

He, Chua, "Neural Factorization Machines for Sparse Predictive Analytics", SIGIR 2017. The
fields are the user id, the item id and every declared user and item feature
(recpipe.models.fields); a multi-valued feature is one field, the mean of its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import NfmConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.fields import FactorisationFields
from recpipe.models.pairs import score_pairs_in_chunks


@dataclass
class Side:
    """One side's (user or item) share of every pair's logit."""

    vector_sum: torch.Tensor  # [..., dim]: sum of the side's field embeddings
    pooled: torch.Tensor  # [..., dim]: bi-interaction pooling within the side
    first: torch.Tensor  # [...]: the side's first-order terms


def _index(side: Side, where: Any) -> Side:
    return Side(side.vector_sum[where], side.pooled[where], side.first[where])


@register("nfm")
class Nfm(RecModel):
    """``logit = b + sum of first-order terms + h . MLP(BI(fields))``, where
    ``BI = sum over field pairs of v_i * v_j`` (element-wise) ``= ((sum v)^2 - sum v^2) / 2``.

    Paper: He & Chua, SIGIR 2017 (dropout on the bi-interaction vector; batch normalisation
    is left out). Trained on pointwise samples with log loss. Across the two sides the
    bi-interaction is ``BI_user + BI_item + sum_user * sum_item``, so scoring every item runs
    only the MLP per (user, item) pair, in chunks of ``score_chunk_pairs``.
    """

    config_class: ClassVar[type[ModelConfig]] = NfmConfig
    sample_kind: ClassVar[SampleKind] = "pointwise"
    paper: ClassVar[str] = (
        "He, Chua. Neural Factorization Machines for Sparse Predictive Analytics. SIGIR 2017."
    )

    def __init__(self, config: NfmConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: NfmConfig = config
        d = config.dim
        self.fields = FactorisationFields(context, d)
        layers: list[nn.Module] = []
        width = d
        for hidden in config.mlp_layers:
            layers.append(nn.Linear(width, hidden))
            width = hidden
        self.mlp = nn.ModuleList(layers)
        self.out = nn.Linear(width, 1)  # h and the global bias
        self.dropout = nn.Dropout(config.dropout)

    @property
    def scores_untrained_items(self) -> bool:
        """With item features: an untrained item is scored from its features (its id field
        reads as missing)."""
        return self.fields.scores_untrained_items

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The user id's embedding and first-order weight."""
        return tuple(f"fields.{name}" for name in FactorisationFields.USER_TABLES)

    @staticmethod
    def _side(vectors: torch.Tensor, first: torch.Tensor) -> Side:
        total = vectors.sum(-2)
        return Side(total, 0.5 * (total.pow(2) - vectors.pow(2).sum(-2)), first)

    def _user_side(self, users: torch.Tensor) -> Side:
        return self._side(*self.fields.users(users))

    def _item_side(self, items: torch.Tensor) -> Side:
        return self._side(*self.fields.items(items))

    def _combine(self, user: Side, item: Side) -> torch.Tensor:
        """Logits of every (user, item) pair the two sides broadcast to."""
        h = self.dropout(user.pooled + item.pooled + user.vector_sum * item.vector_sum)
        for layer in self.mlp:
            h = self.dropout(F.relu(layer(h)))
        return user.first + item.first + self.out(h).squeeze(-1)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Binary cross entropy with logits against ``labels`` (computed in float32)."""
        users, items = batch.require("users"), batch.require("items")
        logits = self._combine(self._user_side(users), self._item_side(items))
        return F.binary_cross_entropy_with_logits(logits.float(), batch.require("labels").float())

    def score_all(self, batch: Batch) -> torch.Tensor:
        """Logits for every (user, item), [B, n_items + 1], ``score_chunk_pairs`` at a time."""
        users = batch.require("users")
        items = self._item_side(torch.arange(self.n_items + 1, device=users.device))
        return score_pairs_in_chunks(
            users, self.n_items + 1, self.config.score_chunk_pairs, self._user_side, items,
            _index, self._combine,
        )  # fmt: skip
