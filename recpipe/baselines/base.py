"""The baseline contract: train from a split, score users against the whole catalogue, persist.

A model's folder is ``<root>/models/<name>/<ds>/<protocol>/`` holding ``arrays.npz`` (its
learned arrays) and ``meta.json`` (name, sizes, settings), enough to rebuild it alone.
"""

from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy import sparse

from recpipe import storage
from recpipe.artifacts import KIND_FILES
from recpipe.storage import LocationLike, as_location
from recpipe.tables import TrainData


@dataclass(frozen=True)
class SparkTable:
    """A fitted model's table kept in Spark: written to a lake table by the train stage, where
    ``key`` must be unique (checked before it is published)."""

    frame: Any  # pyspark DataFrame (pyspark stays out of this module's imports)
    key: tuple[str, ...]


@dataclass(frozen=True)
class SplitFacts:
    """What a baseline fitted in Spark knows of its train split besides the DataFrame: sizes
    and the items it holds (item-sized, never a row per interaction)."""

    n_users: int  # user_idx < n_users
    n_items: int  # item_idx in 1..n_items
    rows: int
    known_items: np.ndarray  # bool [n_items + 1]

    @classmethod
    def of(cls, data: TrainData | SplitFacts) -> SplitFacts:
        """The facts of a split read into memory (or ``data`` itself)."""
        if isinstance(data, SplitFacts):
            return data
        return cls(data.n_users, data.n_items, len(data.users), known_items_mask(data))


class Baseline(ABC):
    """A trained model that scores users against every item (column 0 is padding)."""

    name: ClassVar[str]
    # Fitted from the split as a Spark DataFrame (context["train_df"]) plus SplitFacts: the
    # train stage then never reads the split into the driver.
    fits_in_spark: ClassVar[bool] = False
    # Scores need a trained per-user row (users absent from training cannot be scored).
    uses_user_ids: ClassVar[bool] = False
    # Scores are computed from the user's history (a user with no known item cannot be scored).
    needs_history: ClassVar[bool] = True

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.arrays = arrays
        self.meta = meta
        self.n_items: int = meta["n_items"]
        # Items the model saw in training; others get -inf so they are never recommended.
        self.known_items: np.ndarray = arrays["known_items"]
        self.history: sparse.csr_matrix | None = None
        # State fitted in Spark that grows with users or item pairs stays there: the train
        # stage writes these frames to their lake tables (names in meta) and scoring and
        # evaluation on the executors join them per user; single-process use reads them back.
        self.spark_tables: dict[str, SparkTable] = {}

    @property
    def user_vectors_table(self) -> str | None:
        """The lake table holding this model's user vectors when they are not in its arrays
        (scoring and evaluation then join them per user as a column), else None."""
        table = self.meta.get("user_vectors")
        return str(table) if table and "user_factors" not in self.arrays else None

    @property
    def neighbours_table(self) -> str | None:
        """The lake table holding this model's item neighbours when they are not in its arrays
        (scoring and evaluation then join each user's best candidates as a column), else
        None."""
        table = self.meta.get("neighbours")
        return str(table) if table and "sim" not in self.arrays else None

    def attach_user_vectors(self, vectors: np.ndarray) -> None:
        """Hold the user vectors [n_users, d] in memory (single-process scoring/evaluation)."""
        self.arrays["user_factors"] = np.asarray(vectors, dtype=np.float32)

    def scores_of_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Raw scores [len(vectors), n_items + 1] of users given by their vectors (models with
        :attr:`user_vectors_table` only)."""
        raise NotImplementedError(f"{self.name} has no user vectors")

    def scores_of_candidates(self, items: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Raw score rows [U, n_items + 1] from each user's best candidates (models with
        :attr:`neighbours_table` only)."""
        raise NotImplementedError(f"{self.name} has no candidates")

    def attach_history(self, data: TrainData) -> None:
        """Set users' binary train histories, which item-based models score from."""
        history = data.matrix()
        history.data[:] = 1.0
        self.history = history

    def require_history(self) -> sparse.csr_matrix:
        """The attached histories, or a clear error."""
        if self.history is None:
            raise RuntimeError(f"{self.name} scores from train histories: call attach_history")
        return self.history

    @classmethod
    @abstractmethod
    def fit(cls, data: TrainData | SplitFacts, settings: Any, **context: Any) -> Baseline:
        """Train on ``data`` with the model's config section ``settings`` (``SplitFacts`` and
        ``context["train_df"]`` when :attr:`fits_in_spark`)."""

    @abstractmethod
    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        """Scores [len(users), n_items + 1] before masking."""

    def score(self, users: np.ndarray) -> np.ndarray:
        """Scores [len(users), n_items + 1]; padding and untrained items are -inf."""
        scores = np.asarray(self.raw_scores(np.asarray(users, dtype=np.int64)), dtype=np.float64)
        scores[:, ~self.known_items] = -np.inf
        return scores

    def factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(user vectors [n_users, d], item vectors [n_items + 1, d]) when scores are their dot
        products, else None."""
        return None

    def item_factors(self) -> np.ndarray | None:
        """Item vectors [n_items + 1, d] when scores are user vectors . item vectors."""
        return None

    def save(self, folder: LocationLike) -> None:
        """Make ``folder`` (any location) hold exactly ``arrays.npz`` and ``meta.json``.

        Each file is replaced atomically, one after the other (object stores have no folder
        rename): a reader catching the folder mid-save sees files that fail the SHA-256 check
        against its training manifest (recpipe.artifacts), never a silently mixed model.
        """
        folder = as_location(folder)
        arrays = io.BytesIO()
        # numpy's stub: mypy checks **arrays against savez's keyword-only allow_pickle: bool.
        np.savez(arrays, **self.arrays)  # type: ignore[arg-type]
        meta = json.dumps({"name": self.name, **self.meta}, indent=2)
        files = {"arrays.npz": arrays.getvalue(), "meta.json": meta.encode("utf-8")}
        for entry in storage.list_dir(folder):  # what an earlier save or anything else left
            if entry.name not in files:
                storage.remove_tree(entry.location)
        for name, data in files.items():
            storage.write_bytes(folder / name, data)

    @classmethod
    def load(cls, folder: LocationLike) -> Baseline:
        """Rebuild from a folder written by :meth:`save`."""
        base = as_location(folder)
        return cls.from_files({name: storage.read_bytes(base / name) for name in BASELINE_FILES})

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> Baseline:
        """Rebuild from the bytes of ``meta.json`` and ``arrays.npz`` (never unpickled)."""
        meta = json.loads(files["meta.json"])
        with np.load(io.BytesIO(files["arrays.npz"]), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        return cls(arrays, meta)


BASELINE_FILES = KIND_FILES["baseline"]  # what save() writes and load() reads


def known_items_mask(data: TrainData) -> np.ndarray:
    """Boolean [n_items + 1]: items with at least one training interaction."""
    mask = np.zeros(data.n_items + 1, dtype=bool)
    mask[data.items] = True
    mask[0] = False
    return mask


def base_meta(data: TrainData | SplitFacts, settings: Any) -> dict[str, Any]:
    """Fields every model's meta.json carries."""
    facts = SplitFacts.of(data)
    return {
        "n_users": facts.n_users,
        "n_items": facts.n_items,
        "train_rows": facts.rows,
        "settings": settings.model_dump(mode="json") if hasattr(settings, "model_dump") else {},
    }
