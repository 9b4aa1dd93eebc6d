"""MMoE: two tasks, whether a user interacts with an item and the rating they give it, sharing
a set of expert networks through one softmax gate per task.

Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018. The input is every field recpipe knows of the pair
(user id, item id and each declared user and item feature, recpipe.models.fields); the rating
is the pointwise sample's ``value`` (MovieLens's 1-5 stars). Ranking by the interaction
probability times the predicted rating follows ESMM's product of the two tasks (Ma, Zhao,
Hu, Zhu, Gai, Zhu, "Entire Space Multi-Task Model", SIGIR 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch
from recpipe.model_settings import MmoeConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.fields import FactorisationFields
from recpipe.models.layers import relu_mlp
from recpipe.models.pairs import FactorisationModel

TASKS = ("interaction", "rating")


@dataclass
class Side:
    """One side's (user or item) share of every pair's network input."""

    first: torch.Tensor  # [...]: first-order terms (the interaction task's biases)
    hidden: torch.Tensor  # [..., experts * h0]: the side's share of each expert's first layer
    gates: torch.Tensor  # [..., tasks * experts]: the side's share of each task's gate logits


@register("mmoe")
class Mmoe(FactorisationModel):
    """``expert_e = MLP_e(fields)``, ``mix_t = sum_e softmax(gate_t(fields))_e expert_e``,
    ``interaction = first-order terms + tower_interaction(mix_interaction)`` (a logit) and
    ``rating = rating_scale * sigmoid(tower_rating(mix_rating))``.

    Paper: Ma et al., KDD 2018 (MMoE). Trained on pointwise samples: log loss of the interaction
    logit against the label, plus ``rating_weight`` times the squared error of ``rating /
    rating_scale`` against ``value / rating_scale`` on positives that have a value (sampled
    rows have none). A list ranks by the interaction logit, or with ``rank_by:
    expected_rating`` by ``sigmoid(interaction) * rating`` (ESMM's product, Ma et al., SIGIR
    2018). Each expert's first layer and each gate are linear in the fields, so they split into
    a user and an item share computed once; the rest runs per (user, item) pair, in chunks of
    ``score_chunk_pairs``.
    """

    config_class: ClassVar[type[ModelConfig]] = MmoeConfig
    reads_values: ClassVar[bool] = True
    paper: ClassVar[str] = (
        "Ma, Zhao, Yi, Chen, Hong, Chi. Modeling Task Relationships in Multi-task Learning with "
        "Multi-gate Mixture-of-Experts. KDD 2018."
    )

    def __init__(self, config: MmoeConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: MmoeConfig = config
        d, experts, tasks = config.dim, config.experts, len(TASKS)
        self.fields = FactorisationFields(context, d, config.user_id_dropout)
        first = config.expert_layers[0]
        self.user_in = nn.Linear(d * self.fields.count("users"), experts * first)
        self.item_in = nn.Linear(d * self.fields.count("items"), experts * first, bias=False)
        self.user_gate = nn.Linear(d * self.fields.count("users"), tasks * experts)
        self.item_gate = nn.Linear(d * self.fields.count("items"), tasks * experts, bias=False)
        uppers = [relu_mlp(first, config.expert_layers[1:], config.dropout) for _ in range(experts)]
        self.experts = nn.ModuleList(upper for upper, _ in uppers)
        width = uppers[0][1]
        self.towers = nn.ModuleList()
        for _ in TASKS:
            tower, out = relu_mlp(width, config.tower_layers, config.dropout)
            self.towers.append(nn.Sequential(*tower, nn.Linear(out, 1)))
        self.dropout = nn.Dropout(config.dropout)
        self._parts: dict[str, torch.Tensor] = {}

    def user_side(self, users: torch.Tensor, context: torch.Tensor | None = None) -> Side:
        vectors, first = self.fields.users(users, context)
        flat = vectors.flatten(-2)
        return Side(first, self.user_in(flat), self.user_gate(flat))

    def item_side(self, items: torch.Tensor) -> Side:
        vectors, first = self.fields.items(items)
        flat = vectors.flatten(-2)
        return Side(first, self.item_in(flat), self.item_gate(flat))

    def _mixed(self, user: Side, item: Side) -> torch.Tensor:
        """[..., tasks, width]: each task's gated mix of the experts' outputs."""
        experts = self.config.experts
        hidden = self.dropout(F.relu(user.hidden + item.hidden))
        hidden = hidden.unflatten(-1, (experts, -1))  # [..., experts, h0]
        outputs = torch.stack([net(hidden[..., e, :]) for e, net in enumerate(self.experts)], -2)
        gates = (user.gates + item.gates).unflatten(-1, (len(TASKS), experts)).softmax(-1)
        return gates.to(outputs.dtype) @ outputs

    def _interaction(self, mixed: torch.Tensor, user: Side, item: Side) -> torch.Tensor:
        return self.towers[0](mixed[..., 0, :]).squeeze(-1) + user.first + item.first

    def _rating(self, mixed: torch.Tensor) -> torch.Tensor:
        rating = torch.sigmoid(self.towers[1](mixed[..., 1, :]).squeeze(-1))
        return rating * self.config.rating_scale

    def heads(self, user: Side, item: Side) -> torch.Tensor:
        """[..., 2]: the interaction logit and the predicted rating of every pair."""
        mixed = self._mixed(user, item)
        return torch.stack([self._interaction(mixed, user, item), self._rating(mixed)], -1)

    def combine(self, user: Side, item: Side) -> torch.Tensor:
        """The ranking score of every pair: the interaction logit or the expected rating (the
        rating tower runs only for the latter: scoring runs this for every pair)."""
        mixed = self._mixed(user, item)
        interaction = self._interaction(mixed, user, item)
        if self.config.rank_by == "interaction":
            return interaction
        return torch.sigmoid(interaction) * self._rating(mixed)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Log loss of the interaction plus ``rating_weight`` times the scaled squared error of
        the rating, averaged over the positives that have a value."""
        users, items = batch.require("users"), batch.require("items")
        labels, values = batch.require("labels").float(), batch.require("values").float()
        heads = self.heads(self.user_side(users, batch.context), self.item_side(items)).float()
        interaction = F.binary_cross_entropy_with_logits(heads[:, 0], labels)
        rated = (labels > 0) & torch.isfinite(values)
        scale = self.config.rating_scale
        # Every row stays in the graph (a zero where unrated): each rank's backward then
        # reaches the rating tower even on a batch without ratings, as DDP needs.
        error = torch.where(rated, (heads[:, 1] - torch.nan_to_num(values)) / scale, 0.0)
        rating = error.pow(2).sum() / rated.sum().clamp(min=1)
        self._parts = {"interaction": interaction.detach(), "rating": rating.detach()}
        return interaction + self.config.rating_weight * rating

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """The last loss's two tasks: interaction log loss and scaled rating squared error."""
        return dict(self._parts)
