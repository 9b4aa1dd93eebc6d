"""SVD++: matrix factorisation whose user vector adds the implicit feedback of the history.

Koren, "Factorization Meets the Neighborhood: a Multifaceted Collaborative Filtering Model",
KDD 2008.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import SvdPpConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.losses import causal_targets, next_item_loss


@register("svdpp")
class SvdPp(RecModel):
    """``score(u, i) = b_i + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)``.

    Paper: Koren, "Factorization Meets the Neighborhood", KDD 2008 (the user's own factor
    ``p_u`` plus implicit-feedback factors ``y_j`` of the items the user interacted with). On
    implicit data the model is fitted as a next-item ranker: at each real position ``N(u)`` is
    the history up to that position, and the loss (``config.loss``) ranks the next item. The
    global mean and user bias of the rating model are left out: they do not change a user's
    ranking. For retrieval the item bias is folded into the vectors, as in BPR-MF.
    """

    config_class: ClassVar[type[ModelConfig]] = SvdPpConfig
    sample_kind: ClassVar[SampleKind] = "sequence"
    paper: ClassVar[str] = (
        "Koren. Factorization Meets the Neighborhood: a Multifaceted Collaborative Filtering "
        "Model. KDD 2008."
    )

    item_counts: torch.Tensor  # buffer registered in __init__ (train counts, for log-Q)

    def __init__(self, config: SvdPpConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: SvdPpConfig = config
        d = config.dim
        self.user_emb = nn.Embedding(context.n_users, d)
        self.item_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        self.implicit_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        self.item_bias = nn.Embedding(context.n_items + 1, 1, padding_idx=0)
        for table in (self.user_emb, self.item_emb, self.implicit_emb):
            nn.init.normal_(table.weight, std=config.init_std)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
            self.implicit_emb.weight[0].zero_()
        self.register_buffer("item_counts", context.counts_tensor())

    @property
    def uses_user_ids(self) -> bool:
        """Scores read the user's own factor ``p_u`` besides the history."""
        return True

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The user factors ``p_u``."""
        return ("user_emb",)

    def sequence_output(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Per-position user vectors [B, L, dim]: ``p_u`` plus the normalised prefix sum."""
        real = (history != 0)[..., None]
        sums = torch.cumsum(self.implicit_emb(history) * real, dim=1)
        counts = torch.cumsum(real.to(sums.dtype), dim=1).clamp(min=1.0)
        return self.user_emb(users)[:, None, :] + sums * counts.rsqrt()

    def _item_table(self) -> torch.Tensor:
        return torch.cat([self.item_emb.weight, self.item_bias.weight], dim=1)

    @staticmethod
    def _with_one(vectors: torch.Tensor) -> torch.Tensor:
        return torch.cat([vectors, torch.ones_like(vectors[..., :1])], dim=-1)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Next-item loss (``config.loss``) over every real history position."""
        history = batch.require("history")
        targets, train = causal_targets(history, batch.require("items"))
        hidden = self._with_one(self.sequence_output(batch.users, history)[train])
        return next_item_loss(
            self.config.loss, hidden, self._item_table(), targets[train], self.item_counts
        )

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """``[p_u + implicit(history), 1]`` per row, [B, dim + 1]."""
        users = self.sequence_output(batch.users, batch.require("history"))[:, -1]
        return self._with_one(users)

    def item_embeddings(self) -> torch.Tensor:
        """``[q_i, b_i]`` per item, [n_items + 1, dim + 1]."""
        return self._item_table()

    def score_all(self, batch: Batch) -> torch.Tensor:
        """``b_i + q_i . user vector`` for every item, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
