"""STAMP: short-term attention/memory priority, no recurrence.

Liu, Zeng, Mokhosi, Zhang, "STAMP: Short-Term Attention/Memory Priority Model for
Session-based Recommendation", KDD 2018.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from recpipe.model_settings import StampConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.next_item import NextItemModel
from recpipe.models.prefix import additive_prefix_attention, prefix_means


@register("stamp")
class Stamp(NextItemModel):
    """Item vectors ``x_j``; at position ``t`` the last click ``x_t`` and the prefix mean
    ``m_s`` steer an attention ``a_tj = w0 . sigmoid(W1 x_j + W2 x_t + W3 m_s + b)`` whose sum
    ``m_a = sum_j a_tj x_j`` is the general interest; two MLP cells give
    ``h_s = tanh(Ws m_a)`` and ``h_t = tanh(Wt x_t)`` and an item scores the trilinear product
    ``<h_s, h_t, x_i>``, i.e. ``(h_s * h_t) . x_i``.

    Paper: Liu et al., "STAMP: Short-Term Attention/Memory Priority Model for Session-based
    Recommendation", KDD 2018. Every real position of a history trains at once.
    """

    config_class: ClassVar[type[ModelConfig]] = StampConfig
    paper: ClassVar[str] = (
        "Liu, Zeng, Mokhosi, Zhang. STAMP: Short-Term Attention/Memory Priority Model for "
        "Session-based Recommendation. KDD 2018."
    )

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
