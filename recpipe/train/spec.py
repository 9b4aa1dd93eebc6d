"""A training run described as plain JSON, so every launcher hands the same thing to each rank.

Two folders describe where a run's files go. ``run_dir`` is a :class:`~recpipe.storage.Location`
under ``paths.root`` (a local path or any Hadoop URI): checkpoints, ``result.json`` and the model
file, written and read through :mod:`recpipe.storage`. ``local_dir`` is a folder on the launching
machine (under ``paths.local``): the spec file, the per-rank script, the launchers' logs and the
child processes' temp folder, which local tools (torchrun, horovodrun, TorchDistributor) need
as real files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recpipe import storage
from recpipe.models.base import ModelContext, RecModel
from recpipe.storage import Location, LocationLike, as_location


@dataclass
class TrainSpec:
    """Everything a rank needs to train one model on one protocol's exported samples."""

    model: str
    model_config: dict[str, Any]
    context: dict[str, Any]  # ModelContext fields except item counts
    item_counts_file: str  # location of an .npy [n_items + 1], for log-Q and popularity stats
    shards: list[tuple[str, int]]  # (Parquet file location, manifest row count)
    settings: dict[str, Any]  # the `train` config section
    run_dir: str  # location: checkpoints/, result.json (state, under paths.root)
    model_file: str  # location the trained model is written to
    local_dir: str  # this machine's folder: spec file, rank script, logs, child temp
    validation: dict[str, Any] | None = None  # {root, ds, protocol}: early stopping data
    init_file: str | None = None  # checkpoint location whose weights start the run (pre-training)
    resume: bool = False
    start: dict[str, Any] | None = None  # how the run starts (warm_start.StartPlan.record())
    # Version folder rank 0 writes the model's user rows into (recpipe.models.user_rows), with
    # the item-side model beside model.pt; None: the model keeps its user tables inside only.
    user_rows_dir: str | None = None
    stop_after_steps: int | None = None  # stop as if killed after this many steps (tests)
    stop_after_epochs: int | None = None  # a refit: the epoch count validation chose
    # Hadoop settings (spark.hadoop.* without the prefix) for the ranks' recpipe.storage: a rank
    # is a fresh process that never loads the config, yet must resolve viewfs mounts and s3a keys.
    storage: dict[str, str] = field(default_factory=dict)
    # Item and user feature tables (recpipe.features_data.save_tables) whose layout is
    # context["feature_layout"]; None: the data set has no features.
    features_file: str | None = None
    # An .npy bool [n_users]: users with train interactions (a fresh model's other user rows
    # start at zero, see RecModel.forget_untrained_users); None: unknown, nothing is zeroed.
    trained_users_file: str | None = None

    def to_json(self) -> str:
        """Serialise for a spec file or a TorchDistributor argument."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["shards"] = [tuple(shard) for shard in data["shards"]]
        return cls(**data)

    def write(self, path: Path) -> Path:
        """Write the spec to the local file ``path`` (for the launched processes) and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # ``storage`` may hold object store keys: the file is for this user's processes only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.to_json())
        return path

    def item_counts(self) -> np.ndarray:
        """The item counts array :attr:`item_counts_file` holds."""
        return load_array(self.item_counts_file)

    def model_context(self) -> ModelContext:
        """The :class:`ModelContext` a rank builds the model with (counts, masks, features)."""
        trained = None if self.trained_users_file is None else load_array(self.trained_users_file)
        return ModelContext(
            item_counts=self.item_counts(),
            trained_users=trained,
            feature_values=self.feature_values(),
            **self.context,
        )

    def new_model(self) -> RecModel:
        """The model as a run starts it: every random generator seeded with the run's seed
        (the same initial weights on every rank and in the driver), built from its settings,
        untrained users' rows zeroed before any earlier weights are loaded (those keep theirs)."""
        from recpipe.config import TrainConfig
        from recpipe.models import model_class

        seed = TrainConfig.model_validate(self.settings).seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        cls = model_class(self.model)
        model = cls(cls.config_class.model_validate(self.model_config), self.model_context())
        model.forget_untrained_users()
        return model

    def feature_values(self) -> dict[str, Any] | None:
        """The feature tables :attr:`features_file` holds (None without features)."""
        if self.features_file is None:
            return None
        from recpipe.features_data import load_tables

        return load_tables(self.features_file)

    @property
    def checkpoint_dir(self) -> Location:
        """Folder of ``last.pt`` and ``best.pt``."""
        return as_location(self.run_dir) / "checkpoints"

    @property
    def result_file(self) -> Location:
        """Rank 0's summary of the run (read back by the launchers)."""
        return as_location(self.run_dir) / "result.json"


def save_array(location: LocationLike, array: np.ndarray) -> None:
    """Write ``array`` as an ``.npy`` file at any location (atomically)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    storage.write_bytes(location, buffer.getvalue())


def load_array(location: LocationLike) -> np.ndarray:
    """Read an ``.npy`` file written by :func:`save_array` (never unpickled)."""
    return np.load(io.BytesIO(storage.read_bytes(location)), allow_pickle=False)
