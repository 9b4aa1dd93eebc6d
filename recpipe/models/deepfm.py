"""DeepFM: a factorisation machine and a deep network over shared field embeddings.

Guo, Tang, Ye, Li, He, "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction", IJCAI 2017. The fields are the user id, the item id and every declared user and
item feature (recpipe.models.fields); a multi-valued feature is one field, the mean of its
values' embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.model_settings import DeepFmConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.fields import FactorisationFields
from recpipe.models.pairs import FactorisationModel


@dataclass
class Side:
    """One side's (user or item) share of every pair's logit."""

    vector_sum: torch.Tensor  # [..., dim]: sum of the side's field embeddings
    own: torch.Tensor  # [...]: first-order terms + FM interactions within the side
    hidden: torch.Tensor  # [..., h0]: the side's share of the DNN's first layer


@register("deepfm")
class DeepFm(FactorisationModel):
    """``logit = b + sum of first-order terms + FM(all fields) + DNN(concat of all fields)``.

    Paper: Guo et al., IJCAI 2017. Trained on pointwise samples (a positive and
    ``export.negatives`` sampled negatives per interaction) with log loss. Scoring every item
    splits the FM and the DNN's first layer into a user part and an item part (pairwise FM
    interactions across sides are the dot product of the two sides' embedding sums), so only
    the DNN's upper layers run per (user, item) pair, in chunks of ``score_chunk_pairs``.
    """

    config_class: ClassVar[type[ModelConfig]] = DeepFmConfig
    paper: ClassVar[str] = (
        "Guo, Tang, Ye, Li, He. DeepFM: A Factorization-Machine based Neural Network for CTR "
        "Prediction. IJCAI 2017."
    )

    def __init__(self, config: DeepFmConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: DeepFmConfig = config
        d = config.dim
        self.fields = FactorisationFields(context, d, config.user_id_dropout)
        first = config.mlp_layers[0]
        self.user_in = nn.Linear(d * self.fields.count("users"), first)
        self.item_in = nn.Linear(d * self.fields.count("items"), first, bias=False)
        layers: list[nn.Module] = []
        width = first
        for hidden in config.mlp_layers[1:]:
            layers.append(nn.Linear(width, hidden))
            width = hidden
        self.upper = nn.ModuleList(layers)
        self.out = nn.Linear(width, 1)
        self.dropout = nn.Dropout(config.dropout)

    @staticmethod
    def _side(vectors: torch.Tensor, first: torch.Tensor, layer: nn.Linear) -> Side:
        total = vectors.sum(-2)
        interactions = 0.5 * (total.pow(2).sum(-1) - vectors.pow(2).sum((-2, -1)))
        return Side(total, first + interactions, layer(vectors.flatten(-2)))

    def user_side(self, users: torch.Tensor, context: torch.Tensor | None = None) -> Side:
        return self._side(*self.fields.users(users, context), self.user_in)

    def item_side(self, items: torch.Tensor) -> Side:
        return self._side(*self.fields.items(items), self.item_in)

    def combine(self, user: Side, item: Side) -> torch.Tensor:
        """Logits of every (user, item) pair the two sides broadcast to."""
        fm = user.own + item.own + (user.vector_sum * item.vector_sum).sum(-1)
        h = self.dropout(F.relu(user.hidden + item.hidden))
        for layer in self.upper:
            h = self.dropout(F.relu(layer(h)))
        return fm + self.out(h).squeeze(-1)
