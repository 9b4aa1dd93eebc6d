"""Small building blocks several models share."""

from __future__ import annotations

from torch import nn


def relu_mlp(width: int, hidden: list[int], dropout: float) -> tuple[nn.Sequential, int]:
    """``Linear -> ReLU -> Dropout`` per size in ``hidden`` from inputs of ``width``, and the
    output width (``width`` itself when ``hidden`` is empty: the identity)."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    return nn.Sequential(*layers), width
