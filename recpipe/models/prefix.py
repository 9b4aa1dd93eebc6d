"""Per-position summaries of left-padded histories: each position sees only its causal prefix.

Sequence samples train every real position at once (the target of position ``t`` is the item at
``t + 1``), so whatever a model summarises of the history at ``t`` must read positions
``j <= t`` only: the running means and the additive attention here do.
"""

from __future__ import annotations

import torch
from torch import nn


def prefix_mask(history: torch.Tensor) -> torch.Tensor:
    """[B, L, L] bool: query position ``t`` may read key ``j`` (``j <= t``, both real items)."""
    real = history != 0
    length = history.shape[1]
    idx = torch.arange(length, device=history.device)
    causal = idx[None, :] <= idx[:, None]
    return causal[None] & real[:, None, :] & real[:, :, None]


def prefix_means(x: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """[B, L, d] the mean of ``x`` over the real positions up to each position (0 where none)."""
    real = (history != 0).to(x.dtype)[..., None]
    sums = torch.cumsum(x * real, dim=1)
    counts = torch.cumsum(real, dim=1).clamp(min=1.0)
    return sums / counts


def additive_prefix_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    weight: nn.Linear,
    history: torch.Tensor,
) -> torch.Tensor:
    """``sum_j a_tj values_j`` with ``a_tj = weight(sigmoid(query_t + keys_j))`` over the prefix.

    The weights are not normalised by a softmax, as in NARM (Li et al. 2017) and STAMP (Liu et
    al. 2018). ``query`` and ``keys`` are [B, L, a], ``values`` [B, L, d]; ``weight`` maps
    a -> 1. The [B, L, L, a] intermediate is what makes every position train in one pass.
    """
    energy = torch.sigmoid(query[:, :, None, :] + keys[:, None, :, :])
    alpha = weight(energy).squeeze(-1) * prefix_mask(history).to(energy.dtype)
    return alpha @ values
