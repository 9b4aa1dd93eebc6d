"""SASRec: causal self-attention over the item sequence predicting the next item.

Kang, McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recpipe.data.batch import Batch
from recpipe.model_settings import SasRecConfig
from recpipe.models.base import ModelConfig, ModelContext, register
from recpipe.models.next_item import NextItemModel


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention under a boolean ``allowed`` mask [B, L, L]."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Attention output [B, L, dim]; every query must have at least one allowed key."""
        b, length, dim = x.shape
        q, k, v = (
            t.view(b, length, self.num_heads, dim // self.num_heads).transpose(1, 2)
            for t in self.qkv(x).chunk(3, dim=-1)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(b, length, dim))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then point-wise FFN, each residual."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """One block over ``x`` [B, L, dim]."""
        x = x + self.drop(self.attn(self.norm1(x), allowed))
        return x + self.drop(self.ffn(self.norm2(x)))


@register("sasrec")
class SasRec(NextItemModel):
    """Causal self-attention encoder with learned positions and an output tied to the item table.

    Paper: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

    Positions are counted back from the most recent item (the last column is position 0), which
    equals the paper's absolute positions for full-length windows and makes outputs independent
    of how much left padding precedes a history. A query may attend to earlier-or-equal real
    items and always to itself, so padding queries (which see no real key) stay finite, and real
    queries never see padding. Histories longer than ``max_len`` keep their latest items.
    """

    config_class: ClassVar[type[ModelConfig]] = SasRecConfig
    paper: ClassVar[str] = "Kang, McAuley. Self-Attentive Sequential Recommendation. ICDM 2018."

    def __init__(self, config: SasRecConfig, context: ModelContext) -> None:
        super().__init__(config, context)
        self.config: SasRecConfig = config
        d = config.dim
        self.max_len = context.max_len
        self.item_emb = nn.Embedding(context.n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(context.max_len, d)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.ffn_mult * d, config.dropout)
            for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(d)
        self.register_buffer("item_counts", context.counts_tensor())

    def sequence_output(self, history: torch.Tensor) -> torch.Tensor:
        """Per-position output vectors [B, L, dim] (0 at padding); L is at most ``max_len``."""
        length = history.shape[1]
        if length > self.max_len:
            raise ValueError(f"history length {length} exceeds max_len {self.max_len}")
        mask = history != 0
        recency = torch.arange(length - 1, -1, -1, device=history.device)
        x = self.item_emb(history) * math.sqrt(self.config.dim) + self.pos_emb(recency)[None]
        x = self.dropout(x) * mask[..., None]
        idx = torch.arange(length, device=history.device)
        causal = idx[None, :] <= idx[:, None]  # [L, L] query i may see key j <= i
        allowed = (causal[None] & mask[:, None, :]) | torch.eye(
            length, dtype=torch.bool, device=history.device
        )[None]
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x) * mask[..., None]

    def model_history(self, batch: Batch) -> torch.Tensor:
        """The latest ``max_len`` items of the batch's history (the positions it has)."""
        return batch.require("history")[:, -self.max_len :]
