"""Scoring every item with a model whose score needs a network per (user, item) pair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

SideT = TypeVar("SideT")


def score_pairs_in_chunks(
    users: torch.Tensor,
    n_cols: int,
    chunk_pairs: int,
    user_side: Callable[[torch.Tensor], SideT],
    item_side: SideT,
    index: Callable[[SideT, Any], SideT],
    combine: Callable[[SideT, SideT], torch.Tensor],
) -> torch.Tensor:
    """[len(users), n_cols] scores, ``combine(user block, item block)`` over about
    ``chunk_pairs`` pairs at a time, so memory stays bounded whatever the catalogue size.

    ``user_side(users)`` and ``item_side`` (of items 0..n_cols-1) are each side's precomputed
    share; ``index(side, key)`` slices one; user blocks get a broadcast dimension for items.
    """
    cols = min(n_cols, chunk_pairs)
    rows = max(1, chunk_pairs // cols)
    out_rows = []
    for r0 in range(0, len(users), rows):
        user = index(user_side(users[r0 : r0 + rows]), (slice(None), None))
        chunks = [
            combine(user, index(item_side, slice(c0, c0 + cols))) for c0 in range(0, n_cols, cols)
        ]
        out_rows.append(torch.cat(chunks, dim=1))
    return torch.cat(out_rows, dim=0)
