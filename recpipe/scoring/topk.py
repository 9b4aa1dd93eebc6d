"""Exact top-K in torch over item blocks, seen items excluded, ties broken by item index.

Order everywhere is score descending, then item index ascending, so a list never depends on
block sizes, partitioning or ``torch.topk``'s choice among equal values. Items scoring
``-inf`` (masked, unknown, seen) are never returned: a row with fewer than ``k`` candidates
is padded with item 0 and score ``-inf``, the layout of :func:`recpipe.evaluation.ranking.top_k`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from recpipe.evaluation.ranking import PAD_ITEM

NEG_INF = float("-inf")


def rank_candidates(
    values: torch.Tensor, items: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best of each row's candidates (values, item indexes) [B, C], best first."""
    by_item = torch.argsort(items, dim=1, stable=True)
    values, items = values.gather(1, by_item), items.gather(1, by_item)
    # A stable descending sort keeps equal values in ascending item order.
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, by_value), items.gather(1, by_value)


def block_candidates(
    scores: torch.Tensor, k: int, columns: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``min(k, n)`` columns of each row of ``scores`` [B, n], exactly.

    ``columns`` [n] (ascending) names the item of each column; by default its position.
    Where more columns tie at the cut than there are places, the smallest items are kept.
    NaN counts as -inf. ``scores`` may be modified in place.
    """
    n_cols = scores.shape[1]
    kept = min(k, n_cols)
    probe = min(kept + 1, n_cols)
    values, positions = torch.topk(scores, probe, dim=1, sorted=True)
    if torch.isnan(values).any():  # topk ranks NaN first: clean the block (rare) and redo
        clean_scores(scores)
        values, positions = torch.topk(scores, probe, dim=1, sorted=True)
    crowded = torch.zeros(0, dtype=torch.int64, device=scores.device)
    if probe > kept:
        # A column equal to the k-th value can be left out only when the (k+1)-th equals it;
        # torch.topk picks arbitrarily among equal values, so those rows get a stable sort.
        crowded = torch.nonzero(values[:, kept] == values[:, kept - 1]).squeeze(1)
    values, positions = values[:, :kept], positions[:, :kept]
    if crowded.numel():
        ordered, order = torch.sort(scores[crowded], dim=1, descending=True, stable=True)
        values[crowded], positions[crowded] = ordered[:, :kept], order[:, :kept]
    items = positions if columns is None else columns[positions]
    return values, items


class TopK:
    """Running top-``k`` of a block of users, fed item block by item block."""

    def __init__(self, n_users: int, k: int) -> None:
        self.n_users = n_users
        self.k = k
        self.values: torch.Tensor | None = None
        self.items: torch.Tensor | None = None

    def add(self, scores: torch.Tensor, columns: torch.Tensor | None = None) -> None:
        """Merge an item block's scores [B, n] (items ``columns``, else the column position)."""
        values, items = block_candidates(scores, self.k, columns)
        if self.values is not None and self.items is not None:
            values = torch.cat([self.values, values.to(self.values.dtype)], dim=1)
            items = torch.cat([self.items, items], dim=1)
        self.values, self.items = rank_candidates(values, items, self.k)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(items [B, k] int64, scores [B, k] float64), padded with item 0 / -inf."""
        items = np.zeros((self.n_users, self.k), dtype=np.int64)
        scores = np.full((self.n_users, self.k), NEG_INF)
        if self.values is None or self.items is None:
            return items, scores
        values = self.values.double().cpu().numpy()
        chosen = self.items.cpu().numpy()
        chosen[np.isneginf(values)] = PAD_ITEM
        found = values.shape[1]
        items[:, :found], scores[:, :found] = chosen, values
        return items, scores


def mask_pairs(
    scores: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, lo: int = 0
) -> None:
    """Set ``scores[rows, columns - lo]`` to -inf for the pairs whose column lies in the block."""
    inside = (columns >= lo) & (columns < lo + scores.shape[1])
    scores[rows[inside], columns[inside] - lo] = NEG_INF


def clean_scores(scores: torch.Tensor) -> torch.Tensor:
    """NaN counts as -inf (a model's NaN must never be recommended)."""
    return scores.masked_fill_(torch.isnan(scores), NEG_INF)


def item_blocks(n_items: int, block: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` column ranges of at most ``block`` columns covering ``0..n_items - 1``."""
    for lo in range(0, n_items, block):
        yield lo, min(n_items, lo + block)


def dot_top_k(
    queries: torch.Tensor,
    item_vectors: torch.Tensor,
    item_ids: torch.Tensor,
    k: int,
    seen_rows: torch.Tensor,
    seen_columns: torch.Tensor,
    item_block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``queries @ item_vectors.T`` [B, m] without materialising more than one
    item block; column j is item ``item_ids[j]`` (ascending); ``(seen_rows, seen_columns)``
    are (row, column) pairs excluded."""
    top = TopK(queries.shape[0], k)
    for lo, hi in item_blocks(item_vectors.shape[0], item_block):
        scores = queries @ item_vectors[lo:hi].T
        mask_pairs(scores, seen_rows, seen_columns, lo)
        top.add(scores, item_ids[lo:hi])
    return top.result()


def dense_top_k(
    scores: torch.Tensor, k: int, seen_rows: torch.Tensor, seen_columns: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of full score rows [B, n_items + 1] (column = item index; column 0 masked)."""
    scores = scores if scores.is_floating_point() else scores.float()
    scores[:, PAD_ITEM] = NEG_INF
    mask_pairs(scores, seen_rows, seen_columns)
    top = TopK(scores.shape[0], k)
    top.add(scores)
    return top.result()
