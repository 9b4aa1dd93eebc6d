"""Users' histories as one flat array: the input of every scorer (numpy only, no Spark)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class UserHistories:
    """Users [U] with their histories as one flat array: user u's items are
    ``items[offsets[u]:offsets[u] + lengths[u]]``, oldest first.

    ``vectors`` [U, d] float32, when given, are the users' trained vectors that came as a
    column with the histories (NaN rows: the model has no vector for that user).
    ``candidates`` (items [U, c] int64, scores [U, c] float64), when given, are each user's best
    candidates computed in Spark (item 0 pads).
    ``trained`` [U] bool, when given, says which users have train interactions (joined in
    Spark, so that no mask over every user is shipped with the model).
    """

    users: np.ndarray
    lengths: np.ndarray
    items: np.ndarray
    vectors: np.ndarray | None = None
    candidates: tuple[np.ndarray, np.ndarray] | None = None
    trained: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def has_vector(self) -> np.ndarray:
        """Bool [U]: the user came with a trained vector (all False without ``vectors``)."""
        if self.vectors is None or self.vectors.shape[1] == 0:
            # Width 0: no user of the batch came with a vector (all nulls).
            return np.zeros(len(self.users), dtype=bool)
        return ~np.isnan(self.vectors).any(axis=1)

    def require_vectors(self) -> np.ndarray:
        """``vectors``, or a clear error when the users came without them."""
        if self.vectors is None:
            raise RuntimeError("these users came without their vectors: join the vector column")
        return self.vectors

    @classmethod
    def from_events(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        ts: np.ndarray,
        distinct: bool,
        n_users: int | None = None,
    ) -> UserHistories:
        """Each user's items ordered by (time, item index), users ascending.

        ``distinct``: keep each (user, item) once, at its first time (what scoring excludes
        and conditions on); otherwise every interaction, repeats included (the layout of the
        export stage's sequence samples, which sequence models were trained on).
        ``n_users``: list every user ``0..n_users - 1``, empty where there are no events, so
        that row ``u`` is user ``u`` (``take(users)`` then selects by user index).
        """
        users, items, ts = (np.asarray(a, dtype=np.int64) for a in (users, items, ts))
        if distinct:
            order = np.lexsort((ts, items, users))
            users, items, ts = users[order], items[order], ts[order]
            first = np.ones(len(users), dtype=bool)
            first[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
            users, items, ts = users[first], items[first], ts[first]
        order = np.lexsort((items, ts, users))
        distinct_users, lengths = np.unique(users[order], return_counts=True)
        if n_users is None:
            return cls(distinct_users, lengths, items[order])
        every = np.zeros(n_users, dtype=np.int64)
        every[distinct_users] = lengths
        return cls(np.arange(n_users), every, items[order])

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> UserHistories:
        """The histories of ``rows`` (positions), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        gather = np.repeat(self.offsets[rows] - np.cumsum(lengths) + lengths, lengths)
        vectors = None if self.vectors is None else self.vectors[rows]
        candidates = None
        if self.candidates is not None:
            candidates = (self.candidates[0][rows], self.candidates[1][rows])
        return UserHistories(
            self.users[rows],
            lengths,
            self.items[gather + np.arange(len(gather))],
            vectors,
            candidates,
            None if self.trained is None else self.trained[rows],
        )

    def require_candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """``candidates``, or a clear error when the users came without them."""
        if self.candidates is None:
            raise RuntimeError(
                "these users came without their candidates: join the candidate columns"
            )
        return self.candidates

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) for every history entry."""
        return np.repeat(np.arange(len(self.users)), self.lengths), self.items

    def recent(self, max_len: int, keep: np.ndarray) -> np.ndarray:
        """[U, max_len] the last ``max_len`` items with ``keep[item]`` true, left-padded with 0
        (the layout of the export stage's sequence samples)."""
        rows, items = self.pairs()
        inside = items < len(keep)
        usable = np.zeros(len(items), dtype=bool)
        usable[inside] = keep[items[inside]]
        rows, items = rows[usable], items[usable]
        out = np.zeros((len(self.users), max_len), dtype=np.int64)
        if not len(rows):
            return out
        counts = np.bincount(rows, minlength=len(self.users))
        ends = np.cumsum(counts)
        from_end = ends[rows] - 1 - np.arange(len(rows))
        last = from_end < max_len
        out[rows[last], max_len - 1 - from_end[last]] = items[last]
        return out
