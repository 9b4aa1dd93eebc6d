"""The item bag of a bag sample, as autoencoder recommenders read and reconstruct it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bag_input(
    table: nn.Embedding,
    history: torch.Tensor,
    keep: float,
    training: bool,
    normalize: bool = True,
) -> torch.Tensor:
    """``x @ W`` for the history's multi-hot row ``x`` [B, n_items + 1] (L2-normalised when
    ``normalize``), with dropout of rate ``1 - keep`` on its items while training (kept items
    scaled by ``1 / keep``): [B, dim] as a weighted sum of table rows (``embedding_bag``), so
    neither an item-sized input row nor a [B, L, dim] gather is ever built."""
    weights = (history != 0).float()
    if training and keep < 1.0:
        weights = weights * torch.bernoulli(torch.full_like(weights, keep)) / keep
    if normalize:
        weights = weights * (history != 0).float().sum(1, keepdim=True).clamp(min=1.0).rsqrt()
    summed = F.embedding_bag(
        history, table.weight, mode="sum", per_sample_weights=weights.to(table.weight.dtype),
        padding_idx=table.padding_idx,
        # The functional form ignores the module's flag: without it the table's gradient is
        # dense (table-sized) even when training asked for sparse ones.
        sparse=table.sparse,
    )  # fmt: skip
    return summed.float()


def bag_targets(history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """[B, L + 1] the row's items to reconstruct: its history and its target (0 = none)."""
    return torch.cat([history, items[:, None]], dim=1)


def multinomial_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_i x_i log softmax(logits)_i`` for the bag ``x`` given as item
    ids ``targets`` [B, T] (0 = none): summed over the bag, as in Mult-VAE's ELBO. Column 0 of
    ``logits`` (padding) takes no probability. Rows without any target are left out."""
    log_p = F.log_softmax(logits[:, 1:].float(), dim=-1)
    real = targets != 0
    picked = torch.gather(log_p, 1, (targets - 1).clamp(min=0)) * real
    rows = real.any(1)
    if not rows.any():
        return logits.sum() * 0.0
    return -picked.sum(1)[rows].mean()
