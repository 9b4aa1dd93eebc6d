"""Wide & Deep: a linear model over sparse and crossed features, jointly with a deep network.

Cheng, Koc, Harmsen, Shaked, Chandra, Aradhye, Anderson, Corrado, Chai, Ispir, Anil, Haque,
Hong, Jain, Liu, Shah, "Wide & Deep Learning for Recommender Systems", DLRS 2016. The wide
part's inputs are the user id, the item id, every declared feature and the cross product of
every user categorical feature with every item categorical or multi-valued feature (hashed
into ``cross_buckets`` weights); the deep part embeds the same fields as DeepFM and NFM do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.model_settings import WideDeepConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.fields import FactorisationFields, layout_of
from recpipe.models.pairs import FactorisationModel

# Odd multipliers that spread (cross, user value, item value) over the hashed weights.
_CROSS_MULTIPLIER, _USER_MULTIPLIER = 1_000_003, 8_191


@dataclass
class Side:
    """One side's (user or item) share of every pair's logit."""

    first: torch.Tensor  # [...]: the side's wide first-order terms
    hidden: torch.Tensor  # [..., h0]: the side's share of the deep part's first layer
    values: torch.Tensor  # [..., C, width]: the crossed features' value indexes (0: none)


def crossed_pairs(layout: dict[str, list[dict[str, Any]]] | None) -> list[tuple[str, str]]:
    """(user feature, item feature) pairs the wide part crosses: every user categorical with
    every item categorical or multi-valued feature."""
    users = [f["name"] for f in layout_of(layout, "users") if f["kind"] == "categorical"]
    items = [f["name"] for f in layout_of(layout, "items") if f["kind"] in ("categorical", "multi")]
    return [(user, item) for user in users for item in items]


@register("wide_deep")
class WideDeep(FactorisationModel):
    """``logit = b + wide(ids, features, crosses) + out(MLP([every field's embedding]))``.

    Paper: Cheng et al., DLRS 2016 (jointly trained; one optimiser here, where the paper used
    FTRL for the wide part). Trained on pointwise samples with log loss. A cross of a user
    value ``a`` with a multi-valued item feature adds the mean of ``w[hash(a, b)]`` over the
    item's values ``b``. Scoring every item splits the first deep layer into a user and an
    item part, so only the upper layers and the crossed weights run per pair, in chunks of
    ``score_chunk_pairs``.
    """

    config_class: ClassVar[type[ModelConfig]] = WideDeepConfig
    paper: ClassVar[str] = (
        "Cheng et al. Wide & Deep Learning for Recommender Systems. DLRS 2016 (1st Workshop on "
        "Deep Learning for Recommender Systems)."
    )

    def __init__(self, config: WideDeepConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: WideDeepConfig = config
        d = config.dim
        self.fields = FactorisationFields(context, d, config.user_id_dropout)
        self.crosses = crossed_pairs(context.feature_layout)
        self.cross_weight = nn.Embedding(config.cross_buckets, 1)
        nn.init.zeros_(self.cross_weight.weight)
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

    def _values(self, keys: torch.Tensor, side: str) -> torch.Tensor:
        """[*keys.shape, C, width] value indexes of each cross's ``side`` feature."""
        encoder = self.fields.user_fields if side == "users" else self.fields.item_fields
        width = 1
        columns = []
        for user, item in self.crosses:
            name = user if side == "users" else item
            table = encoder.table(name)
            known = keys < table.shape[0]
            column = table[torch.where(known, keys, torch.zeros_like(keys))] * known[..., None]
            columns.append(column)
            width = max(width, column.shape[-1])
        if not columns:
            return keys.new_zeros((*keys.shape, 0, 1))
        padded = [F.pad(c, (0, width - c.shape[-1])) for c in columns]
        return torch.stack(padded, dim=-2)

    def user_side(self, users: torch.Tensor, context: torch.Tensor | None = None) -> Side:
        vectors, first = self.fields.users(users, context)
        return Side(first, self.user_in(vectors.flatten(-2)), self._values(users, "users"))

    def item_side(self, items: torch.Tensor) -> Side:
        vectors, first = self.fields.items(items)
        return Side(first, self.item_in(vectors.flatten(-2)), self._values(items, "items"))

    def _cross_terms(self, user: Side, item: Side) -> torch.Tensor:
        """Sum over crosses of the mean hashed weight of (user value, each item value)."""
        if not self.crosses:
            return user.first.new_zeros(())
        a = user.values[..., 0]  # [..., C]: one value per user categorical
        b = item.values  # [..., C, width]
        cross = torch.arange(len(self.crosses), device=b.device)
        code = (cross * _CROSS_MULTIPLIER)[:, None] + (a * _USER_MULTIPLIER)[..., None] + b
        weights = self.cross_weight(code % self.config.cross_buckets)[..., 0]
        present = ((a[..., None] != 0) & (b != 0)).to(weights.dtype)
        per_cross = (weights * present).sum(-1) / present.sum(-1).clamp(min=1)
        return per_cross.sum(-1)

    def combine(self, user: Side, item: Side) -> torch.Tensor:
        """Logits of every (user, item) pair the two sides broadcast to."""
        h = self.dropout(F.relu(user.hidden + item.hidden))
        for layer in self.upper:
            h = self.dropout(F.relu(layer(h)))
        wide = user.first + item.first + self._cross_terms(user, item)
        return wide + self.out(h).squeeze(-1)
