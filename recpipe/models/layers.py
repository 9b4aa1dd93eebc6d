"""Small building blocks several models share."""

from __future__ import annotations

import torch
from torch import nn


def relu_mlp(width: int, hidden: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    """``Linear -> ReLU -> Dropout`` per size in ``hidden`` from inputs of ``width``, and the
    output width (``width`` itself when ``hidden`` is empty: the identity)."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    return nn.Sequential(*layers), width


def with_ones(vectors: torch.Tensor) -> torch.Tensor:
    """``[v, 1]`` per row: the query side of an affine score ``v . w_i + b_i`` written as one
    dot product with :func:`with_bias`'s item rows (what scoring's matmul ranks)."""
    return torch.cat([vectors, torch.ones_like(vectors[:, :1])], dim=1)


def with_bias(weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[w_i, b_i]`` per item: the item side of :func:`with_ones`; ``bias`` is [n, 1]."""
    return torch.cat([weights, bias], dim=1)
