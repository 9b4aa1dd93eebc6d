"""Full-catalogue top-K ranking in user blocks, and the CSR user -> items layout it relies on.

Item indexes run 1..n_items; column 0 of every score array is padding and is never
recommended. A user's "CSR row" is ``indices[indptr[u]:indptr[u + 1]]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recpipe.errors import BlockTooLargeError

Csr = tuple[np.ndarray, np.ndarray]
ScoreFn = Callable[[np.ndarray], np.ndarray]

PAD_ITEM = 0
# Dense float64 score rows alive at once per user while a block is ranked: the model's rows,
# the masked copy, the ranking's working arrays.
ROW_COPIES = 3


def users_per_block(n_items: int, wanted: int, budget_mib: int, key: str) -> int:
    """At most ``wanted`` users, and few enough that their dense score rows over ``n_items``
    items fit in ``budget_mib`` MiB; :class:`BlockTooLargeError` naming ``key`` when not even
    one row does."""
    row_bytes = (n_items + 1) * 8 * ROW_COPIES
    fit = budget_mib * 2**20 // row_bytes
    if fit < 1:
        raise BlockTooLargeError(
            f"{key}={budget_mib} MiB cannot hold one user's score rows over {n_items:,} items "
            f"(~{row_bytes / 2**20:.1f} MiB): raise {key}"
        )
    return min(wanted, int(fit))


def csr_from_pairs(users: np.ndarray, items: np.ndarray, n_users: int) -> Csr:
    """(indptr [n_users + 1], indices): each user's distinct items, sorted ascending.

    ``users`` must lie in ``0..n_users - 1``; duplicate pairs are dropped.
    """
    users = np.asarray(users, dtype=np.int64).ravel()
    items = np.asarray(items, dtype=np.int64).ravel()
    if users.shape != items.shape:
        raise ValueError(f"users and items differ in length: {users.size} vs {items.size}")
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user indexes must lie in 0..{n_users - 1}")
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    first = np.ones(users.size, dtype=bool)
    first[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items = users[first], items[first]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items


def csr_rows(csr: Csr, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths [len(rows)], items): the CSR rows of ``rows`` concatenated in that order.

    Rows beyond the CSR (e.g. users unseen in train) are empty rather than an error.
    """
    indptr, indices = csr
    rows = np.asarray(rows, dtype=np.int64)
    inside = (rows >= 0) & (rows < indptr.size - 1)
    safe = np.where(inside, rows, 0)
    starts = indptr[safe]
    lengths = np.where(inside, indptr[safe + 1] - starts, 0)
    # Position j of the output reads indices[starts[r] + (j - offset[r])] for its row r.
    offsets = np.cumsum(lengths) - lengths
    gather = np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())
    return lengths, indices[gather]


def top_k(
    score_fn: ScoreFn,
    users: np.ndarray,
    k: int,
    n_items: int,
    seen: Csr | None,
    batch: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items per user: (items [U, k] int64, scores [U, k] float64), best first.

    ``score_fn(user_batch)`` returns scores [B, n_items + 1] for at most ``batch`` users at a
    time. Column 0 and the user's ``seen`` items are masked out. Order is score descending;
    equal scores rank the smaller item index first, so results do not depend on ``batch``.
    NaN scores count as -inf, and items scoring -inf are never recommended: when fewer than
    ``k`` items remain, the row is padded with item 0 and score -inf.
    """
    if k < 1 or batch < 1:
        raise ValueError(f"k and batch must be positive, got k={k}, batch={batch}")
    users = np.asarray(users, dtype=np.int64).ravel()
    items = np.zeros((users.size, k), dtype=np.int64)
    scores = np.full((users.size, k), -np.inf)
    top_of_block = _block_ranker()
    for start in range(0, users.size, batch):
        block = users[start : start + batch]
        rows = slice(start, start + block.size)
        items[rows], scores[rows] = top_of_block(
            _masked_scores(score_fn(block), block, n_items, seen), k
        )
    return items, scores


def _block_ranker() -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """The scoring job's exact top-K (:mod:`recpipe.scoring.topk`) where torch is installed:
    one ``torch.topk`` pass over the block's rows, where the numpy fallback takes about eight
    (threshold, comparisons, counts, gathers); both order alike (score, then item index)."""
    try:
        import torch

        from recpipe.scoring.topk import TopK
    except ImportError:
        return _top_of_block

    def ranked(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        top = TopK(scores.shape[0], k)
        top.add(torch.from_numpy(scores))
        return top.result()

    return ranked


def _masked_scores(
    raw: np.ndarray, block: np.ndarray, n_items: int, seen: Csr | None
) -> np.ndarray:
    """A writable float copy of ``raw`` with padding, seen items and NaN set to -inf."""
    raw = np.asarray(raw)
    if raw.shape != (block.size, n_items + 1):
        raise ValueError(
            f"score_fn returned shape {raw.shape}, expected {(block.size, n_items + 1)}"
        )
    # float32 scorers stay float32 (half the memory); anything else is ranked as float64.
    dtype = np.float32 if raw.dtype == np.float32 else np.float64
    # fmax returns a fresh array (scorers may hand back cached or read-only ones) and, as it
    # ignores NaN, turns every NaN into -inf in the same pass.
    scores = np.fmax(raw, -np.inf, dtype=dtype)
    scores[:, PAD_ITEM] = -np.inf
    if seen is not None:
        lengths, seen_items = csr_rows(seen, block)
        scores[np.repeat(np.arange(block.size), lengths), seen_items] = -np.inf
    return scores


def _top_of_block(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each row with ties broken by smaller column, padded to ``k`` (numpy,
    for an environment without torch)."""
    n_rows, n_cols = scores.shape
    kept = min(k, n_cols)
    threshold = _kth_largest(scores, kept)[:, None]
    above = scores > threshold
    tied = scores == threshold
    room = kept - above.sum(axis=1)
    crowded = np.flatnonzero(tied.sum(axis=1) > room)
    if crowded.size:
        # Columns are in item order, so a running count ranks the tied items by index.
        tie_rank = np.cumsum(tied[crowded], axis=1, dtype=np.int32)
        tied[crowded] &= tie_rank <= room[crowded, None]
    columns = np.nonzero(above | tied)[1].reshape(n_rows, kept)
    values = np.take_along_axis(scores, columns, axis=1)
    # Stable sort keeps the ascending column order among equal scores.
    order = np.argsort(-values, axis=1, kind="stable")
    columns = np.take_along_axis(columns, order, axis=1)
    values = np.take_along_axis(values, order, axis=1).astype(np.float64)
    columns[np.isneginf(values)] = PAD_ITEM
    items = np.zeros((n_rows, k), dtype=np.int64)
    out_scores = np.full((n_rows, k), -np.inf)
    items[:, :kept], out_scores[:, :kept] = columns, values
    return items, out_scores


def _kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest value of each row; torch.topk when torch is installed (faster,
    multi-threaded), else ``np.partition``. Only the value is used, so both agree exactly."""
    try:
        import torch
    except ImportError:
        n_cols = scores.shape[1]
        return np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]
    return torch.topk(torch.from_numpy(scores), k, dim=1).values[:, -1].numpy()
