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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow.dataset as pads
from scipy import sparse

from recpipe.artifacts import KIND_FILES
from recpipe.commit import current_version
from recpipe.errors import MissingInputError
from recpipe.parquet_files import verified_dataset
from recpipe.schema import DS, EVENT_TYPE, ITEM_IDX, TS, USER_IDX, VALUE


@dataclass
class TrainData:
    """One split of interactions as numpy arrays, plus the vocabulary sizes."""

    users: np.ndarray  # int64 user_idx
    items: np.ndarray  # int64 item_idx
    event_types: np.ndarray  # str
    values: np.ndarray  # float64, NaN where absent
    ts: np.ndarray  # int64 epoch seconds
    n_users: int  # user_idx < n_users
    n_items: int  # item_idx in 1..n_items

    def matrix(self, weights: np.ndarray | None = None) -> sparse.csr_matrix:
        """Users x (n_items + 1) CSR of summed weights (1 per interaction by default)."""
        data = np.ones(len(self.users)) if weights is None else weights
        shape = (self.n_users, self.n_items + 1)
        matrix = sparse.csr_matrix((data, (self.users, self.items)), shape=shape)
        matrix.sum_duplicates()
        return matrix


def split_path(root: Path, table: str, ds: str, protocol: str) -> Path:
    """Folder of the current version of one split partition; MissingInputError if none."""
    return current_version(root, table, {DS: ds, "protocol": protocol})


def vocab_size(root: Path, table: str, idx_col: str, ds: str) -> int:
    """Largest index in a vocabulary snapshot (read with pyarrow, no JVM)."""
    folder = current_version(root, table, {DS: ds})
    column = verified_dataset(folder).to_table(columns=[idx_col]).column(0)
    return int(column.to_numpy().max()) if len(column) else 0


def _split_dataset(root: Path, ds: str, protocol: str, part: str) -> pads.Dataset:
    try:
        folder = split_path(root, part, ds, protocol)
    except MissingInputError:
        raise MissingInputError(
            f"no {part} split for protocol={protocol} ds={ds}: run `recpipe split --ds {ds} "
            f"--set split.protocols=[{protocol}]`"
        ) from None
    return verified_dataset(folder)


def split_item_counts(root: Path, ds: str, protocol: str, part: str, n_items: int) -> np.ndarray:
    """Interactions per item [n_items + 1] in one split part (reads the item column only)."""
    items = _split_dataset(root, ds, protocol, part).to_table(columns=[ITEM_IDX]).column(0)
    return np.bincount(items.to_numpy().astype(np.int64), minlength=n_items + 1)


def load_split(root: Path, ds: str, protocol: str, part: str) -> TrainData:
    """Read ``part`` (train/valid/test) of ``protocol`` for ``ds`` into numpy arrays."""
    table = _split_dataset(root, ds, protocol, part).to_table(
        columns=[USER_IDX, ITEM_IDX, EVENT_TYPE, VALUE, TS]
    )
    ts = table.column(TS).cast("int64").to_numpy() // 1_000_000  # micros -> seconds
    values = table.column(VALUE).to_numpy().astype(np.float64)  # pyarrow 12 and 26 alike
    return TrainData(
        users=table.column(USER_IDX).to_numpy().astype(np.int64),
        items=table.column(ITEM_IDX).to_numpy().astype(np.int64),
        event_types=np.asarray(table.column(EVENT_TYPE).to_pylist(), dtype=object),
        values=values,
        ts=ts,
        n_users=vocab_size(root, "vocab_users", USER_IDX, ds) + 1,
        n_items=vocab_size(root, "vocab_items", ITEM_IDX, ds),
    )


class Baseline(ABC):
    """A trained model that scores users against every item (column 0 is padding)."""

    name: ClassVar[str]
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
    def fit(cls, data: TrainData, settings: Any, **context: Any) -> Baseline:
        """Train on ``data`` with the model's config section ``settings``."""

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

    def save(self, folder: Path) -> None:
        """Write ``arrays.npz`` and ``meta.json`` into ``folder`` (replaced atomically)."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        # numpy's stub: mypy checks **arrays against savez's keyword-only allow_pickle: bool.
        np.savez(tmp / "arrays.npz", **self.arrays)  # type: ignore[arg-type]
        (tmp / "meta.json").write_text(json.dumps({"name": self.name, **self.meta}, indent=2))
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            folder.rename(old)
            tmp.rename(folder)
            for path in old.iterdir():
                path.unlink()
            old.rmdir()
        else:
            tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> Baseline:
        """Rebuild from a folder written by :meth:`save`."""
        return cls.from_files({name: (Path(folder) / name).read_bytes() for name in BASELINE_FILES})

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


def base_meta(data: TrainData, settings: Any) -> dict[str, Any]:
    """Fields every model's meta.json carries."""
    return {
        "n_users": data.n_users,
        "n_items": data.n_items,
        "train_rows": len(data.users),
        "settings": settings.model_dump(mode="json") if hasattr(settings, "model_dump") else {},
    }
