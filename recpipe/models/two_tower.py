"""Two-tower retrieval: a user tower over the mean history embedding, an item embedding tower.

Covington, Adams, Sargin, "Deep Neural Networks for YouTube Recommendations", RecSys 2016;
trained with in-batch sampled softmax and log-Q correction after Yi, Yang, Hong, Cheng,
Heldt, Kumthekar, Zhao, Wei, Chi, "Sampling-Bias-Corrected Neural Modeling for Large Corpus
Item Recommendations", RecSys 2019.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import TwoTowerConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.losses import causal_targets, log_q, sampled_softmax_loss


@register("two_tower")
class TwoTower(RecModel):
    """User tower ``MLP([mean history embedding ; user embedding])``, item tower a lookup table.

    Papers: Covington et al., RecSys 2016 (architecture) and Yi et al., RecSys 2019 (in-batch
    softmax with log-Q correction). Training treats every real history position as a query: its
    user vector comes from the mean of the items up to and including it, and the next item is
    the target. The score is the dot product (cosine with ``normalize``), without temperature or
    log-Q, which only shape training.
    """

    config_class: ClassVar[type[ModelConfig]] = TwoTowerConfig
    sample_kind: ClassVar[SampleKind] = "sequence"
    paper: ClassVar[str] = (
        "Covington, Adams, Sargin. Deep Neural Networks for YouTube Recommendations. RecSys "
        "2016; Yi et al. Sampling-Bias-Corrected Neural Modeling for Large Corpus Item "
        "Recommendations. RecSys 2019."
    )

    item_counts: torch.Tensor  # buffer registered in __init__ (train counts, for log-Q)

    def __init__(self, config: TwoTowerConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: TwoTowerConfig = config
        d = config.dim
        self.item_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():  # padding row stays zero (it gets no gradient)
            self.item_emb.weight[0].zero_()
        self.history_emb: nn.Embedding | None = None
        if not config.share_embeddings:
            self.history_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
            nn.init.normal_(self.history_emb.weight, std=d**-0.5)
            with torch.no_grad():
                self.history_emb.weight[0].zero_()
        self.user_emb: nn.Embedding | None = None
        if config.use_user_id:
            self.user_emb = nn.Embedding(context.n_users, d)
            nn.init.normal_(self.user_emb.weight, std=d**-0.5)
        layers: list[nn.Module] = []
        width = 2 * d if config.use_user_id else d
        for hidden in config.tower_layers:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, d))
        self.tower = nn.Sequential(*layers)
        self.register_buffer("item_counts", context.counts_tensor())

    def _history_table(self) -> nn.Embedding:
        return self.item_emb if self.history_emb is None else self.history_emb

    def _tower(self, pooled: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """User vectors from pooled history [..., d] and matching user ids [...]."""
        x = pooled
        if self.user_emb is not None:
            x = torch.cat([pooled, self.user_emb(users).to(pooled.dtype)], dim=-1)
        out = self.tower(x)
        return F.normalize(out, dim=-1) if self.config.normalize else out

    def _masked_embeddings(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """History embeddings with padding zeroed (whatever row 0 holds) and the real-item mask."""
        mask = history != 0
        return self._history_table()(history) * mask[..., None], mask

    def loss(self, batch: Batch) -> torch.Tensor:
        """In-batch sampled softmax with log-Q over every real position's next item."""
        history, users = batch.require("history"), batch.require("users")
        targets, train = causal_targets(history, batch.require("items"))
        emb, mask = self._masked_embeddings(history)
        if self.config.query == "causal_prefix":
            # Causal prefix mean: padding adds zero to the sum and nothing to the count.
            counts = mask.cumsum(1).clamp(min=1)[..., None]
            queries = emb.cumsum(1) / counts
        else:
            # Every item of the window (history and final target) except the target itself.
            items = torch.cat([history, batch.require("items")[:, None]], 1)
            window, window_mask = self._masked_embeddings(items)
            total = window.sum(1, keepdim=True)
            others = (window_mask.sum(1, keepdim=True) - 1).clamp(min=1)[..., None]
            queries = (total - window[:, 1:]) / others
        pos_users = users[:, None].expand_as(history)
        hidden = self._tower(queries[train], pos_users[train])
        return sampled_softmax_loss(
            hidden,
            self.item_emb.weight,
            targets[train],
            log_q(self.item_counts),
            temperature=self.config.temperature,
            normalize=self.config.normalize,
        )

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The user id embedding, with ``use_user_id`` only."""
        assert isinstance(config, TwoTowerConfig)
        return ("user_emb",) if config.use_user_id else ()

    @property
    def uses_user_ids(self) -> bool:
        """Only with ``use_user_id``; otherwise the tower reads the history alone."""
        return self.config.use_user_id

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """[B, dim] user vectors from the mean over all real history items."""
        emb, mask = self._masked_embeddings(batch.require("history"))
        pooled = emb.sum(1) / mask.sum(1).clamp(min=1)[:, None]
        return self._tower(pooled, batch.require("users"))

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, dim] item vectors (normalised with ``normalize``)."""
        table = self.item_emb.weight
        return F.normalize(table, dim=-1) if self.config.normalize else table

    def score_all(self, batch: Batch) -> torch.Tensor:
        """``user_embeddings @ item_embeddings.T``, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
