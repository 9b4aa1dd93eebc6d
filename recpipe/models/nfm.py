"""NFM: neural factorisation machine, bi-interaction pooling under a multi-layer perceptron.

He, Chua, "Neural Factorization Machines for Sparse Predictive Analytics", SIGIR 2017. The
fields are the user id, the item id and every declared user and item feature
(recpipe.models.fields); a multi-valued feature is one field, the mean of its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.model_settings import NfmConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.fields import FactorisationFields
from recpipe.models.pairs import FactorisationModel


@dataclass
class Side:
    """One side's (user or item) share of every pair's logit."""

    vector_sum: torch.Tensor  # [..., dim]: sum of the side's field embeddings
    pooled: torch.Tensor  # [..., dim]: bi-interaction pooling within the side
    first: torch.Tensor  # [...]: the side's first-order terms


@register("nfm")
class Nfm(FactorisationModel):
    """``logit = b + sum of first-order terms + h . MLP(BI(fields))``, where
    ``BI = sum over field pairs of v_i * v_j`` (element-wise) ``= ((sum v)^2 - sum v^2) / 2``.

    Paper: He & Chua, SIGIR 2017 (dropout on the bi-interaction vector; batch normalisation
    is left out). Trained on pointwise samples with log loss. Across the two sides the
    bi-interaction is ``BI_user + BI_item + sum_user * sum_item``, so scoring every item runs
    only the MLP per (user, item) pair, in chunks of ``score_chunk_pairs``.
    """

    config_class: ClassVar[type[ModelConfig]] = NfmConfig
    paper: ClassVar[str] = (
        "He, Chua. Neural Factorization Machines for Sparse Predictive Analytics. SIGIR 2017."
    )

    def __init__(self, config: NfmConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: NfmConfig = config
        d = config.dim
        self.fields = FactorisationFields(context, d, config.user_id_dropout)
        layers: list[nn.Module] = []
        width = d
        for hidden in config.mlp_layers:
            layers.append(nn.Linear(width, hidden))
            width = hidden
        self.mlp = nn.ModuleList(layers)
        self.out = nn.Linear(width, 1)  # h and the global bias
        self.dropout = nn.Dropout(config.dropout)

    @staticmethod
    def _side(vectors: torch.Tensor, first: torch.Tensor) -> Side:
        total = vectors.sum(-2)
        return Side(total, 0.5 * (total.pow(2) - vectors.pow(2).sum(-2)), first)

    def user_side(self, users: torch.Tensor, context: torch.Tensor | None = None) -> Side:
        return self._side(*self.fields.users(users, context))

    def item_side(self, items: torch.Tensor) -> Side:
        return self._side(*self.fields.items(items))

    def combine(self, user: Side, item: Side) -> torch.Tensor:
        """Logits of every (user, item) pair the two sides broadcast to."""
        h = self.dropout(user.pooled + item.pooled + user.vector_sum * item.vector_sum)
        for layer in self.mlp:
            h = self.dropout(F.relu(layer(h)))
        return user.first + item.first + self.out(h).squeeze(-1)
