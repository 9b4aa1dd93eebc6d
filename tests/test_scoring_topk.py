"""Blocked torch top-K against the evaluation library's numpy top-K, ties and masks included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recpipe.evaluation.ranking import csr_from_pairs, top_k
from recpipe.scoring.histories import UserHistories
from recpipe.scoring.topk import block_candidates, dense_top_k, dot_top_k


def _reference(scores: np.ndarray, seen_users, seen_items, k: int):
    n_users, n_cols = scores.shape
    seen = csr_from_pairs(seen_users, seen_items, n_users)
    return top_k(lambda rows: scores[rows], np.arange(n_users), k, n_cols - 1, seen, batch=7)


@pytest.mark.parametrize("item_block", [1, 5, 16, 1000])
def test_blocked_dot_product_top_k_equals_numpy_ranking_with_ties(item_block) -> None:
    rng = np.random.default_rng(0)
    # Small integer vectors give exact, heavily tied scores.
    users = rng.integers(-2, 3, size=(23, 3)).astype(np.float32)
    items = rng.integers(-2, 3, size=(41, 3)).astype(np.float32)
    items[0] = 0  # padding row
    seen_users = rng.integers(0, 23, size=60)
    seen_items = rng.integers(1, 41, size=60)
    scores = users.astype(np.float64) @ items.T.astype(np.float64)
    expected_items, expected_scores = _reference(scores, seen_users, seen_items, k=6)

    ids = torch.arange(1, 41)
    got_items, got_scores = dot_top_k(
        torch.from_numpy(users), torch.from_numpy(items[1:]), ids, 6,
        torch.from_numpy(seen_users), torch.from_numpy(seen_items - 1), item_block,
    )  # fmt: skip
    np.testing.assert_array_equal(got_items, expected_items)
    np.testing.assert_array_equal(got_scores, expected_scores)


def test_dense_top_k_pads_rows_with_too_few_candidates_and_ignores_nan() -> None:
    scores = np.array([[0.0, 3.0, np.nan, 1.0, 1.0], [0.0, -np.inf, -np.inf, 2.0, -np.inf]])
    items, values = dense_top_k(
        torch.from_numpy(scores.copy()), 4, torch.tensor([0]), torch.tensor([1])
    )
    expected_items, expected_values = _reference(scores, [0], [1], 4)
    np.testing.assert_array_equal(items, expected_items)
    np.testing.assert_array_equal(values, expected_values)
    assert items.tolist() == [[3, 4, 0, 0], [3, 0, 0, 0]]


def test_block_candidates_keep_the_smallest_columns_among_ties_at_the_cut() -> None:
    scores = torch.tensor([[1.0] * 50 + [2.0]])
    values, columns = block_candidates(scores, 3)
    assert columns.tolist() == [[50, 0, 1]]
    assert values.tolist() == [[2.0, 1.0, 1.0]]


def test_user_histories_take_and_recent_window() -> None:
    histories = UserHistories(np.array([7, 8, 9]), np.array([3, 0, 2]), np.array([5, 6, 1, 4, 2]))
    taken = histories.take(np.array([2, 0]))
    assert taken.users.tolist() == [9, 7]
    assert taken.items.tolist() == [4, 2, 5, 6, 1]
    keep = np.array([False, True, True, False, True, True, True])  # item 3 unknown
    recent = histories.recent(2, keep)
    assert recent.tolist() == [[6, 1], [0, 0], [4, 2]]


def test_nan_scores_are_never_recommended_in_the_blocked_product() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[5.0, 0.0], [float("nan"), 1.0], [1.0, 2.0], [0.5, 0.5]])
    got_items, got_scores = dot_top_k(
        users, items, torch.tensor([1, 2, 3, 4]), 3,
        torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 2,
    )  # fmt: skip
    assert got_items.tolist() == [[1, 3, 4], [3, 4, 1]]
    assert np.isfinite(got_scores).all()


def test_a_block_whose_users_all_lack_a_vector_has_no_scorable_user() -> None:
    """All-null vector columns arrive as width 0: no user has a vector (none is scored)."""
    import pyarrow as pa

    from recpipe.scoring.distributed import vectors_from_arrow

    column = pa.array([None, None], type=pa.list_(pa.float32()))
    vectors = vectors_from_arrow(column)
    assert vectors.shape == (2, 0)
    histories = UserHistories(
        users=np.array([3, 4]), lengths=np.array([1, 1]), items=np.array([1, 2]), vectors=vectors
    )
    assert not histories.has_vector().any()
    mixed = vectors_from_arrow(pa.array([None, [1.0, 2.0]], type=pa.list_(pa.float32())))
    with_one = UserHistories(
        users=np.array([3, 4]), lengths=np.array([1, 1]), items=np.array([1, 2]), vectors=mixed
    )
    assert with_one.has_vector().tolist() == [False, True]
