"""BPR-MF: matrix factorisation trained with the Bayesian Personalized Ranking loss.

Rendle, Freudenthaler, Gantner, Schmidt-Thieme, "BPR: Bayesian Personalized Ranking from
Implicit Feedback", UAI 2009.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import BprMfConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.layers import with_bias, with_ones


@register("bpr_mf")
class BprMf(RecModel):
    """Matrix factorisation with item bias, ``score(u, i) = p_u . q_i + b_i``, trained with BPR.

    Paper: Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit Feedback", UAI 2009.

    For retrieval the bias is folded into the vectors: :meth:`item_embeddings` is ``[q_i, b_i]``
    and :meth:`user_embeddings` is ``[p_u, 1]``, so ``score_all == users @ items.T`` exactly.
    """

    config_class: ClassVar[type[ModelConfig]] = BprMfConfig
    sample_kind: ClassVar[SampleKind] = "pairwise"
    paper: ClassVar[str] = (
        "Rendle, Freudenthaler, Gantner, Schmidt-Thieme. BPR: Bayesian Personalized Ranking "
        "from Implicit Feedback. UAI 2009."
    )

    def __init__(self, config: BprMfConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: BprMfConfig = config
        self.user_emb = nn.Embedding(context.n_users, config.dim)
        self.item_emb = nn.Embedding(context.n_items + 1, config.dim, padding_idx=0)
        self.item_bias = nn.Embedding(context.n_items + 1, 1, padding_idx=0)
        nn.init.normal_(self.user_emb.weight, std=config.init_std)
        nn.init.normal_(self.item_emb.weight, std=config.init_std)
        nn.init.zeros_(self.item_bias.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @classmethod
    def user_table_names(cls, config: ModelConfig) -> tuple[str, ...]:
        """The user factors ``p_u``."""
        return ("user_emb",)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean over (row, valid negative) of ``-log sigma(s_pos - s_neg)`` plus L2.

        The L2 term is ``reg`` times the per-row mean of ``|p_u|^2 + |q_i|^2 + b_i^2`` plus the
        mean over the row's negatives of ``|q_j|^2 + b_j^2`` (only the rows' own parameters, as
        in the paper's SGD). Negatives equal to 0 (padding from a short negative list) are
        ignored.
        """
        users, pos = batch.require("users"), batch.require("items")
        neg = batch.require("negatives")
        u = self.user_emb(users)  # [B, d]
        q_pos, b_pos = self.item_factors(pos), self.item_bias(pos).squeeze(-1)  # [B, d], [B]
        q_neg, b_neg = self.item_factors(neg), self.item_bias(neg).squeeze(-1)  # [B, N, d]
        s_pos = ((u * q_pos).sum(-1) + b_pos).float()
        s_neg = ((u[:, None, :] * q_neg).sum(-1) + b_neg).float()
        valid = (neg != 0).float()
        n_valid = valid.sum(-1).clamp(min=1.0)
        rank = -(F.logsigmoid(s_pos[:, None] - s_neg) * valid).sum() / valid.sum().clamp(min=1.0)
        neg_l2 = ((q_neg.float().pow(2).sum(-1) + b_neg.float().pow(2)) * valid).sum(-1) / n_valid
        row_l2 = u.float().pow(2).sum(-1) + q_pos.float().pow(2).sum(-1) + b_pos.float().pow(2)
        return rank + self.config.reg * (row_l2 + neg_l2).mean()

    def item_factors(self, items: torch.Tensor) -> torch.Tensor:
        """``q_i`` of ``items`` [*items.shape, dim] (a subclass may add to the id row)."""
        return self.item_emb(items)

    def all_item_factors(self) -> torch.Tensor:
        """``q_i`` of every item, [n_items + 1, dim]."""
        return self.item_emb.weight

    def score_all(self, batch: Batch) -> torch.Tensor:
        """``p_u . q_i + b_i`` for every item, [B, n_items + 1]."""
        u = self.user_emb(batch.require("users"))
        return u @ self.all_item_factors().T + self.item_bias.weight[:, 0]

    def item_embeddings(self) -> torch.Tensor:
        """``[q_i, b_i]`` per item, [n_items + 1, dim + 1]."""
        return with_bias(self.all_item_factors(), self.item_bias.weight)

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """``[p_u, 1]`` per row, [B, dim + 1], matching :meth:`item_embeddings`."""
        u = self.user_emb(batch.require("users"))
        return with_ones(u)
