"""Hybrid content two-tower: the item tower reads item features, so items never seen in
training still get a vector and can be recommended (content-based cold start).

Two-tower retrieval after Covington, Adams, Sargin, "Deep Neural Networks for YouTube
Recommendations", RecSys 2016, with item and user feature embeddings in the towers as in Yi,
Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei, Chi, "Sampling-Bias-Corrected Neural Modeling
for Large Corpus Item Recommendations", RecSys 2019 (in-batch softmax, log-Q correction); the
id embedding is dropped for a share of training items (as dropout of the preference input in
Volkovs, Yu, Poutanen, "DropoutNet: Addressing Cold Start in Recommender Systems", NeurIPS
2017) so the tower learns to place an item from its content alone; in the same way the
history is emptied for a share of training queries, so the user tower learns to place a user
without history (cold users) from their profile alone.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import HybridTwoTowerConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.fields import FieldEncoder, layout_of
from recpipe.models.layers import relu_mlp
from recpipe.models.losses import causal_targets, log_q


def _mlp(width: int, hidden: list[int], out: int, dropout: float) -> nn.Sequential:
    body, width = relu_mlp(width, hidden, dropout)
    return nn.Sequential(*body, nn.Linear(width, out))


@register("hybrid_two_tower")
class HybridTwoTower(RecModel):
    """Item vector ``MLP([id embedding ; item feature fields])``, user vector
    ``MLP([mean of the history's item vectors ; user feature fields])``; score = dot product
    (cosine with ``normalize``).

    Papers: Covington et al., RecSys 2016; Yi et al., RecSys 2019; Volkovs et al., NeurIPS 2017
    (dropout of the id input). Training: every real history position is a query (the causal
    prefix mean of item vectors), its next item the target, in-batch sampled softmax with
    log-Q. An item without training interactions has no id input at scoring time (its
    embedding never trained), so its vector comes from its features alone.
    """

    config_class: ClassVar[type[ModelConfig]] = HybridTwoTowerConfig
    sample_kind: ClassVar[SampleKind] = "sequence"
    paper: ClassVar[str] = (
        "Covington, Adams, Sargin. Deep Neural Networks for YouTube Recommendations. RecSys "
        "2016; Yi et al. Sampling-Bias-Corrected Neural Modeling for Large Corpus Item "
        "Recommendations. RecSys 2019; Volkovs, Yu, Poutanen. DropoutNet: Addressing Cold "
        "Start in Recommender Systems. NeurIPS 2017."
    )

    item_counts: torch.Tensor  # buffer: train counts (log-Q; 0 marks an untrained item)

    def __init__(self, config: HybridTwoTowerConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: HybridTwoTowerConfig = config
        d = config.dim
        layout, values = context.feature_layout, context.feature_values
        self.item_fields = FieldEncoder(
            "items", layout_of(layout, "items"), context.n_items + 1, d, values
        )
        self.user_fields = FieldEncoder(
            "users", layout_of(layout, "users"), context.n_users, d, values
        )
        self.item_emb: nn.Embedding | None = None
        if config.use_item_ids:
            self.item_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
            nn.init.normal_(self.item_emb.weight, std=d**-0.5)
            with torch.no_grad():
                self.item_emb.weight[0].zero_()
        item_inputs = (1 if config.use_item_ids else 0) + self.item_fields.count
        if item_inputs == 0:
            raise ValueError("hybrid_two_tower needs item features or use_item_ids: true")
        self.item_tower = _mlp(d * item_inputs, config.item_layers, d, config.dropout)
        user_inputs = 1 + self.user_fields.count
        self.user_tower = _mlp(d * user_inputs, config.user_layers, d, config.dropout)
        self.register_buffer("item_counts", context.counts_tensor())

    @property
    def uses_user_ids(self) -> bool:
        """No user id: the user tower reads the history and the user's features."""
        return False

    @property
    def scores_untrained_items(self) -> bool:
        """With item features, yes: an untrained item is placed by its features."""
        return self.item_fields.count > 0

    @property
    def scores_untrained_users(self) -> bool:
        """Trained with emptied histories (``history_dropout``), a user without history gets
        a vector from their features (or, without user features, the tower's empty-history
        vector, the same for every such user)."""
        return self.config.history_dropout > 0

    def _tower_weight(self) -> torch.Tensor:
        """The item tower's first weight (its dtype; a graph-connected zero)."""
        return next(self.item_tower.parameters())

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """[*items.shape, dim] item-tower outputs (not normalised); padding gives zeros."""
        parts = []
        dtype = self._tower_weight().dtype
        if self.item_emb is not None:
            keep = self.item_counts[items] > 0  # an untrained id embedding is noise
            if self.training and self.config.id_dropout > 0:
                drop = torch.rand(items.shape, device=items.device) < self.config.id_dropout
                keep = keep & ~drop
            parts.append(self.item_emb(items) * keep[..., None])
        fields = self.item_fields.fields(items)
        if self.item_fields.count:
            parts.append(fields.flatten(-2).to(dtype))
        out = self.item_tower(torch.cat(parts, dim=-1))
        return out * (items != 0)[..., None]

    def _user(self, pooled: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """User vectors from pooled history vectors [..., d] and matching user ids [...]."""
        parts = [pooled]
        if self.user_fields.count:
            parts.append(self.user_fields.fields(users).flatten(-2).to(pooled.dtype))
        out = self.user_tower(torch.cat(parts, dim=-1))
        return F.normalize(out, dim=-1) if self.config.normalize else out

    def _candidates(self, items: torch.Tensor) -> torch.Tensor:
        vectors = self.item_vectors(items)
        return F.normalize(vectors, dim=-1) if self.config.normalize else vectors

    def loss(self, batch: Batch) -> torch.Tensor:
        """In-batch sampled softmax with log-Q over every real position's next item."""
        history, users = batch.require("history"), batch.require("users")
        targets, train = causal_targets(history, batch.require("items"))
        if not bool(train.any()):
            return self._tower_weight().sum() * 0.0
        mask = history != 0
        emb = self.item_vectors(history)
        queries = emb.cumsum(1) / mask.cumsum(1).clamp(min=1)[..., None]
        pos_users = users[:, None].expand_as(history)
        pooled = queries[train]
        if self.training and self.config.history_dropout > 0:
            # DropoutNet on the user side: an emptied history pools to zero, as at scoring.
            keep = torch.rand(pooled.shape[0], device=pooled.device) >= self.config.history_dropout
            pooled = pooled * keep[:, None]
        hidden = self._user(pooled, pos_users[train])
        candidates, labels = torch.unique(targets[train], return_inverse=True)
        logits = (hidden @ self._candidates(candidates).T).float() / self.config.temperature
        logits = logits - log_q(self.item_counts)[candidates].float()
        return F.cross_entropy(logits, labels)

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """[B, dim] user vectors from the mean over all real history items' vectors."""
        history = batch.require("history")
        mask = history != 0
        pooled = self.item_vectors(history).sum(1) / mask.sum(1).clamp(min=1)[:, None]
        return self._user(pooled, batch.require("users"))

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, dim] item-tower outputs of every item (row 0 zero)."""
        items = torch.arange(self.n_items + 1, device=self.item_counts.device)
        return self._candidates(items)

    def score_all(self, batch: Batch) -> torch.Tensor:
        """``user_embeddings @ item_embeddings.T``, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
