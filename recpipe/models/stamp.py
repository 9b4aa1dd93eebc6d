"""STAMP: short-term attention/memory priority, no recurrence.

Liu, Zeng, Mokhosi, Zhang, "STAMP: Short-Term Attention/Memory Priority Model for
Session-based Recommendation", KDD 2018.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from recpipe.data.batch import Batch, SampleKind
from recpipe.model_settings import StampConfig
from recpipe.models.base import ModelConfig, ModelContext, RecModel, register
from recpipe.models.losses import causal_targets, next_item_loss
from recpipe.models.prefix import additive_prefix_attention, prefix_means


@register("stamp")
class Stamp(RecModel):
    """Item vectors ``x_j``; at position ``t`` the last click ``x_t`` and the prefix mean
    ``m_s`` steer an attention ``a_tj = w0 . sigmoid(W1 x_j + W2 x_t + W3 m_s + b)`` whose sum
    ``m_a = sum_j a_tj x_j`` is the general interest; two MLP cells give
    ``h_s = tanh(Ws m_a)`` and ``h_t = tanh(Wt x_t)`` and an item scores the trilinear product
    ``<h_s, h_t, x_i>``, i.e. ``(h_s * h_t) . x_i``.

    Paper: Liu et al., "STAMP: Short-Term Attention/Memory Priority Model for Session-based
    Recommendation", KDD 2018. Every real position of a history trains at once.
    """

    config_class: ClassVar[type[ModelConfig]] = StampConfig
    sample_kind: ClassVar[SampleKind] = "sequence"
    paper: ClassVar[str] = (
        "Liu, Zeng, Mokhosi, Zhang. STAMP: Short-Term Attention/Memory Priority Model for "
        "Session-based Recommendation. KDD 2018."
    )

    item_counts: torch.Tensor  # buffer registered in __init__ (train counts, for log-Q)

    def __init__(self, config: StampConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: StampConfig = config
        d = config.dim
        self.item_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.dropout = nn.Dropout(config.dropout)
        self.w_item = nn.Linear(d, d, bias=False)
        self.w_last = nn.Linear(d, d, bias=False)
        self.w_mean = nn.Linear(d, d)  # its bias is the paper's b_a
        self.w0 = nn.Linear(d, 1, bias=False)
        self.mlp_general = nn.Linear(d, d)
        self.mlp_last = nn.Linear(d, d)
        self.register_buffer("item_counts", context.counts_tensor())

    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """Per-position query vectors ``h_s * h_t`` [B, L, dim] (0 at padding)."""
        x = self.dropout(self.item_emb(history))
        means = prefix_means(x, history)
        general = additive_prefix_attention(
            self.w_last(x) + self.w_mean(means), self.w_item(x), x, self.w0, history
        )
        h_s = torch.tanh(self.mlp_general(general))
        h_t = torch.tanh(self.mlp_last(x))
        return h_s * h_t * (history != 0)[..., None]

    def loss(self, batch: Batch) -> torch.Tensor:
        """Next-item loss (``config.loss``) over every real history position."""
        history = batch.require("history")
        targets, train = causal_targets(history, batch.require("items"))
        hidden = self.sequence_output(history)[train]
        return next_item_loss(
            self.config.loss, hidden, self.item_emb.weight, targets[train], self.item_counts
        )

    def user_embeddings(self, batch: Batch) -> torch.Tensor:
        """[B, dim] the query at the last (most recent) position."""
        return self.sequence_output(batch.require("history"))[:, -1]

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, dim] the item table."""
        return self.item_emb.weight

    def score_all(self, batch: Batch) -> torch.Tensor:
        """Scores of every item after the last history item, [B, n_items + 1]."""
        return self.user_embeddings(batch) @ self.item_embeddings().T
