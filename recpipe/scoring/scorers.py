"""Any trained model (deep checkpoint or baseline) as a scorer of blocks of users.

A :class:`ModelPayload` is everything an executor needs, as bytes and small arrays: the
checkpoint (or a baseline's arrays), which items the model was trained on and which users it
has a trained row for. :func:`build_scorer` rebuilds the model from it. Dot-product models
(item vectors exported by the model) are scored by blocked matrix products; others through
their full score rows, one user block at a time. Either way no users x items matrix exists.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy import sparse

from recpipe.baselines import baseline_class
from recpipe.baselines.base import Baseline, known_items_mask
from recpipe.data.batch import HISTORY_KINDS, Batch
from recpipe.evaluation.ranking import PAD_ITEM
from recpipe.layout import user_rows_table
from recpipe.models.base import RecModel
from recpipe.models.user_rows import ITEM_SIDE_FILE, attach_user_rows
from recpipe.scoring.histories import UserHistories
from recpipe.scoring.topk import NEG_INF, dense_top_k, dot_top_k
from recpipe.tables import TrainData
from recpipe.train.checkpoint import MODEL_FILE, build_model, load_state


@dataclass
class ModelPayload:
    """A trained model shipped to executors."""

    name: str
    kind: Literal["deep", "baseline"]
    files: dict[str, bytes]
    known_items: np.ndarray  # bool [n_items + 1]: items with train interactions
    train_users: np.ndarray  # bool [n_users]: users with train interactions

    @property
    def user_vectors_table(self) -> str | None:
        """The lake table of the model's user vectors when they travel as a column (not in
        the payload), else None."""
        return self._lake_table("user_vectors")

    @property
    def neighbours_table(self) -> str | None:
        """The lake table of the model's item neighbours when each user's best candidates
        travel as a column (not in the payload), else None."""
        return self._lake_table("neighbours")

    def _lake_table(self, key: str) -> str | None:
        if self.kind == "deep":
            # An item-side checkpoint: the user tables are in the model's user-rows table.
            item_side = key == "user_vectors" and ITEM_SIDE_FILE in self.files
            return user_rows_table(self.name) if item_side else None
        table = json.loads(self.files["meta.json"]).get(key)
        return str(table) if table else None

    @property
    def size_bytes(self) -> int:
        """Bytes shipped (files and masks)."""
        masks = self.known_items.size + self.train_users.size
        return sum(len(b) for b in self.files.values()) + masks


class Scorer(ABC):
    """Top-K for blocks of users whose histories are given; knows which users it can score."""

    def __init__(
        self,
        name: str,
        known_items: np.ndarray,
        train_users: np.ndarray,
        uses_user_ids: bool,
        needs_history: bool,
        device: torch.device,
        vectors_in_column: bool = False,
        scores_untrained_users: bool = False,
    ) -> None:
        self.name = name
        # RecModel.scores_untrained_users: every user is scorable, trained or not.
        self.scores_untrained_users = scores_untrained_users
        # User vectors come with the users (UserHistories.vectors), not inside the model.
        self.vectors_in_column = vectors_in_column
        self.known_items = np.asarray(known_items, dtype=bool)
        self.n_items = len(self.known_items) - 1
        self.train_users = np.asarray(train_users, dtype=bool)
        self.uses_user_ids = uses_user_ids
        self.needs_history = needs_history
        self.device = device

    def can_score(self, histories: UserHistories) -> np.ndarray:
        """Bool per user: the model has a trained row for the user (id-based models; the
        users' ``trained`` column when they came with one, else ``train_users``) or at least
        one of the user's items was in training (history-based models); every user for a
        model that scores untrained users (from their profile)."""
        ok = np.ones(len(histories), dtype=bool)
        if self.uses_user_ids and self.vectors_in_column:
            # require_vectors: users sent without the vector column are an error, never
            # silently "cannot score".
            histories.require_vectors()
            if self.scores_untrained_users:
                return ok
            ok &= histories.has_vector()
        if self.scores_untrained_users:
            return ok
        if self.uses_user_ids and histories.trained is not None:
            ok &= histories.trained
        elif self.uses_user_ids:
            if not len(self.train_users):
                raise RuntimeError(
                    "these users came without the trained column and the model without a "
                    "trained-user mask: join the trained column"
                )
            # A deep model has a (never trained) row for every user index: train presence
            # decides, as it does for every id-based model.
            users = histories.users
            inside = users < len(self.train_users)
            ok &= inside & self.train_users[np.where(inside, users, 0)]
        if self.needs_history:
            rows, items = histories.pairs()
            inside = items <= self.n_items
            known = np.zeros(len(items), dtype=bool)
            known[inside] = self.known_items[items[inside]]
            ok &= np.bincount(rows[known], minlength=len(histories)) > 0
        return ok

    def seen_pairs(
        self, histories: UserHistories, position: np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) tensors of the users' seen items the model can score; ``position``
        maps an item to its column (-1: no column)."""
        rows, items = histories.pairs()
        inside = items <= self.n_items
        rows, items = rows[inside], items[inside]
        if position is not None:
            items = position[items]
            rows, items = rows[items >= 0], items[items >= 0]
        return (
            torch.as_tensor(rows, dtype=torch.int64, device=self.device),
            torch.as_tensor(items, dtype=torch.int64, device=self.device),
        )

    @abstractmethod
    def top_k(
        self, histories: UserHistories, k: int, item_block: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items [U, k], scores [U, k]) best first, seen and unknown items excluded, ties by
        smaller item index, padded with item 0 / -inf."""


class DotScorer(Scorer):
    """Scores are user vectors . item vectors: a blocked product over the known items only."""

    def __init__(
        self,
        queries: Callable[[UserHistories], torch.Tensor],
        item_vectors: torch.Tensor,
        **common: object,
    ) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        self.queries = queries
        known = np.flatnonzero(self.known_items)
        self.item_ids = torch.as_tensor(known, dtype=torch.int64, device=self.device)
        self.item_vectors = item_vectors.detach().float()[known].contiguous().to(self.device)
        self.position = np.full(self.n_items + 1, -1, dtype=np.int64)
        self.position[known] = np.arange(len(known))

    @torch.no_grad()
    def top_k(
        self, histories: UserHistories, k: int, item_block: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Scorer.top_k`."""
        queries = self.queries(histories).float().to(self.device)
        rows, columns = self.seen_pairs(histories, self.position)
        return dot_top_k(queries, self.item_vectors, self.item_ids, k, rows, columns, item_block)


class DenseScorer(Scorer):
    """Scores come as full rows [U, n_items + 1] from the model, one user block at a time."""

    def __init__(self, scores: Callable[[UserHistories], torch.Tensor], **common: object) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        self.scores = scores
        self.unknown = torch.as_tensor(np.flatnonzero(~self.known_items), device=self.device)

    @torch.no_grad()
    def top_k(
        self, histories: UserHistories, k: int, item_block: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Scorer.top_k`."""
        scores = self.scores(histories).to(self.device)
        if not scores.is_floating_point():
            scores = scores.float()
        scores = scores.clone()
        scores[:, self.unknown] = NEG_INF
        rows, columns = self.seen_pairs(histories)
        return dense_top_k(scores, k, rows, columns)

    @torch.no_grad()
    def score_rows(self, histories: UserHistories) -> np.ndarray:
        """Full score rows [U, n_items + 1] (padding and unknown items -inf, seen items not
        masked) in the model's precision (float32 for deep models, float64 for baselines):
        the input of the evaluation library's ranking."""
        # One fresh copy. Float32 rows are not widened: widening is exact, so it would change
        # no ranking, only double the bytes every later pass over the block reads.
        rows = np.array(self.scores(histories).detach().cpu().numpy())
        rows[:, ~self.known_items] = NEG_INF
        rows[:, PAD_ITEM] = NEG_INF
        return rows


@dataclass
class HistoryScorer:
    """A :class:`Scorer` over fixed histories indexed by user: ``score(users)`` gives full rows,
    the score function the evaluation library ranks (validation and ``evaluate``)."""

    scorer: DenseScorer
    histories: UserHistories  # row u is user u (UserHistories.from_events(..., n_users=...))
    model: Baseline | RecModel  # what the scorer scores with

    def score(self, users: np.ndarray) -> np.ndarray:
        """Full score rows [len(users), n_items + 1], unknown items -inf (see
        :meth:`DenseScorer.score_rows`)."""
        return self.scorer.score_rows(self.histories.take(np.asarray(users, dtype=np.int64)))


def evaluation_scorer(
    model: Baseline | RecModel,
    train: TrainData,
    device: str = "cpu",
    history: TrainData | None = None,
) -> HistoryScorer:
    """A trained model scored as validation and evaluation rank it: full score rows over each
    user's ``history`` (by default the ``train`` split; a deep model's ``score_all``, a
    baseline's own scores of its users), items the model never trained on -inf (unless
    it scores untrained items from their features: ``RecModel.scores_untrained_items``)."""
    known = train if history is None else history
    histories = UserHistories.from_events(
        known.users, known.items, known.ts, distinct=False, n_users=known.n_users
    )
    trained = np.zeros(train.n_users, dtype=bool)
    trained[train.users] = True
    scorer = dense_evaluation_scorer(model, known_items_mask(train), trained, device)
    return HistoryScorer(scorer, histories, model)


def dense_evaluation_scorer(
    model: Baseline | RecModel,
    known: np.ndarray,
    train_users: np.ndarray,
    device: torch.device | str = "cpu",
) -> DenseScorer:
    """The full score rows both evaluation engines rank: the same function of a block's
    histories in one process (:func:`evaluation_scorer`) and on the Spark executors."""
    if isinstance(model, Baseline):
        return DenseScorer(
            lambda h: torch.as_tensor(baseline_rows(model, h)),
            name=model.name,
            known_items=model.known_items,
            train_users=train_users,
            uses_user_ids=model.uses_user_ids,
            needs_history=model.needs_history,
            device=torch.device(device),
            vectors_in_column=model.user_vectors_table is not None,
        )
    return dense_deep_scorer(model, known, train_users, device)


def baseline_rows(model: Baseline, histories: UserHistories) -> np.ndarray:
    """A baseline's raw scores of these users (float32 stays float32, anything else becomes
    float64): by user id for id-based models, else from the histories given (never a history
    attached for every user)."""
    if model.uses_user_ids and model.user_vectors_table is not None:
        # A user without a trained vector scores like the zero vector (as when the vectors
        # are held in memory, where such a user's row is zeros).
        vectors = np.nan_to_num(histories.require_vectors(), nan=0.0)
        return _score_array(model.scores_of_vectors(vectors))
    if model.uses_user_ids:
        return _score_array(model.raw_scores(histories.users))
    if model.neighbours_table is not None:
        return model.scores_of_candidates(*histories.require_candidates())
    return _score_array(_history_scores(model, histories))


def _score_array(scores: Any) -> np.ndarray:
    """``scores`` as a float array without widening float32 (exact widening ranks alike and
    only doubles the bytes every later pass over the rows reads)."""
    array = np.asarray(scores)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def rebuild_model(payload: ModelPayload) -> Baseline | RecModel:
    """The payload's trained model (a baseline from its arrays, a deep model from its
    ``weights_only`` checkpoint)."""
    if payload.kind == "deep":
        name = ITEM_SIDE_FILE if ITEM_SIDE_FILE in payload.files else MODEL_FILE
        return build_model(load_state(io.BytesIO(payload.files[name])))
    return baseline_class(payload.name).from_files(payload.files)


def _deep_scorer(payload: ModelPayload, device: torch.device) -> Scorer:
    model = rebuild_model(payload)
    assert isinstance(model, RecModel)
    return deep_scorer(model, payload.known_items, payload.train_users, device, payload.name)


def deep_scorer(
    model: RecModel,
    known: np.ndarray,
    train_users: np.ndarray,
    device: torch.device | str = "cpu",
    name: str | None = None,
) -> Scorer:
    """A trained deep model as a :class:`Scorer`: a dot-product scorer over its item vectors
    when it exports them, else its full score rows."""
    model, batch, common = _deep_inputs(model, known, train_users, device, name)
    vectors = model.item_embeddings()
    if vectors is None:
        return DenseScorer(lambda h: model.score_all(batch(h)), **common)

    def queries(histories: UserHistories) -> torch.Tensor:
        users = model.user_embeddings(batch(histories))
        if users is None:
            raise TypeError(f"{model.name}: item embeddings but no user embeddings")
        return users

    return DotScorer(queries, vectors, **common)


def dense_deep_scorer(
    model: RecModel,
    known: np.ndarray,
    train_users: np.ndarray,
    device: torch.device | str = "cpu",
) -> DenseScorer:
    """A trained deep model scored through its full score rows (``score_all``) always: the
    numbers validation and evaluation rank by."""
    model, batch, common = _deep_inputs(model, known, train_users, device, None)
    return DenseScorer(lambda h: model.score_all(batch(h)), **common)


def _deep_inputs(
    model: RecModel,
    known: np.ndarray,
    train_users: np.ndarray,
    device: torch.device | str,
    name: str | None,
) -> tuple[RecModel, Callable[[UserHistories], Batch], dict[str, object]]:
    """The model on ``device`` in eval mode, its batch builder and the scorer's common fields."""
    device = torch.device(device)
    model = model.eval().to(device)
    if model.scores_untrained_items:
        # A content model scores every item it has features for, trained or not (cold items).
        known = np.zeros_like(known, dtype=bool)
        known[1 : min(len(known), model.n_items + 1)] = True
    sequence = model.sample_kind in HISTORY_KINDS
    max_len = model.context.max_len

    def batch(histories: UserHistories) -> Batch:
        # Only items the model trained on enter its input; others have untrained embeddings.
        history = torch.as_tensor(histories.recent(max_len, known)) if sequence else None
        users = torch.as_tensor(histories.users, dtype=torch.int64)
        if model.user_rows is not None:
            # An item-side model: the block's user rows came as a column; a user without one
            # (not scorable, see can_score) gets zeros.
            attach_user_rows(model, np.nan_to_num(histories.require_vectors(), nan=0.0))
            users = torch.arange(len(histories), dtype=torch.int64)
        return Batch(users=users, history=history).to(device)

    common: dict[str, object] = dict(
        name=name or model.name,
        known_items=known,
        train_users=train_users,
        uses_user_ids=model.uses_user_ids,
        needs_history=sequence,
        device=device,
        vectors_in_column=model.user_rows is not None,
        scores_untrained_users=model.scores_untrained_users,
    )
    return model, batch, common


def _baseline_scorer(payload: ModelPayload, device: torch.device) -> Scorer:
    model = rebuild_model(payload)
    assert isinstance(model, Baseline)
    common = dict(
        name=payload.name,
        known_items=payload.known_items & model.known_items,
        train_users=payload.train_users,
        uses_user_ids=model.uses_user_ids,
        needs_history=model.needs_history,
        device=device,
        vectors_in_column=model.user_vectors_table is not None,
    )
    if model.user_vectors_table is not None:
        return DotScorer(
            lambda h: torch.as_tensor(h.require_vectors()),
            torch.as_tensor(model.item_factors()),
            **common,
        )
    if model.neighbours_table is not None:
        return DenseScorer(
            lambda h: torch.as_tensor(model.scores_of_candidates(*h.require_candidates())),
            **common,
        )
    factors = model.factors()
    if factors is not None:
        users, items = factors
        return DotScorer(
            lambda h: torch.as_tensor(users[h.users], dtype=torch.float32),
            torch.as_tensor(items),
            **common,
        )
    return DenseScorer(lambda h: torch.as_tensor(_history_scores(model, h)), **common)


def history_matrix(histories: UserHistories, n_items: int) -> sparse.csr_matrix:
    """[U, n_items + 1] 0/1 CSR of the users' items (items beyond ``n_items`` left out),
    columns sorted: a row's sums then do not depend on how its history was ordered."""
    rows, items = histories.pairs()
    inside = items <= n_items
    history = sparse.csr_matrix(
        (np.ones(int(inside.sum())), (rows[inside], items[inside])),
        shape=(len(histories), n_items + 1),
    )
    history.data[:] = 1.0
    history.sort_indices()
    return history


def _history_scores(model: Baseline, histories: UserHistories) -> np.ndarray:
    """The baseline's raw scores with these histories as the users' rows."""
    model.history = history_matrix(histories, model.n_items)
    return np.asarray(model.raw_scores(np.arange(len(histories))))


def build_scorer(payload: ModelPayload, device: str | torch.device = "cpu") -> Scorer:
    """Rebuild the payload's model as a :class:`Scorer` on ``device``."""
    device = torch.device(device)
    if payload.kind == "deep":
        return _deep_scorer(payload, device)
    return _baseline_scorer(payload, device)
