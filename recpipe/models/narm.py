"""NARM: a GRU encoder with an attention over its states, decoded bilinearly against items.

Li, Ren, Chen, Ren, Lian, Ma, "Neural Attentive Session-based Recommendation", CIKM 2017.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from recpipe.model_settings import NarmConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.gru4rec import left_padded_gru
from recpipe.models.next_item import NextItemModel
from recpipe.models.prefix import additive_prefix_attention


@register("narm")
class Narm(NextItemModel):
    """GRU states ``h_j``; the global encoder is the state at the current position ``h_t``, the
    local encoder ``sum_j a_tj h_j`` with ``a_tj = v . sigmoid(A1 h_t + A2 h_j)`` over the
    prefix; ``[global; local]`` is mapped by ``B`` to the item space and scored against the item
    table by a dot product (the paper's bilinear decoder ``emb_i^T B c_t``).

    Paper: Li et al., "Neural Attentive Session-based Recommendation", CIKM 2017. Every real
    position of a history trains at once (the paper's prefix augmentation of each session).
    """

    config_class: ClassVar[type[ModelConfig]] = NarmConfig
    paper: ClassVar[str] = (
        "Li, Ren, Chen, Ren, Lian, Ma. Neural Attentive Session-based Recommendation. CIKM 2017."
    )

    def __init__(self, config: NarmConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: NarmConfig = config
        hidden = config.hidden_size
        self.item_emb = nn.Embedding(context.n_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.item_emb.weight, std=config.dim**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.emb_dropout = nn.Dropout(config.emb_dropout)
        self.gru = nn.GRU(config.dim, hidden, batch_first=True)
        self.a_global = nn.Linear(hidden, hidden, bias=False)
        self.a_local = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.ct_dropout = nn.Dropout(config.ct_dropout)
        self.decoder = nn.Linear(2 * hidden, config.dim, bias=False)
        self.register_buffer("item_counts", context.counts_tensor())

    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """Per-position session representations [B, L, dim] (0 at padding)."""
        states = left_padded_gru(self.gru, lambda h: self.emb_dropout(self.item_emb(h)), history)
        local = additive_prefix_attention(
            self.a_global(states), self.a_local(states), states, self.v, history
        )
        context = self.ct_dropout(torch.cat([states, local], dim=-1))
        return self.decoder(context) * (history != 0)[..., None]
