"""A training run described as plain JSON, so every launcher hands the same thing to each rank."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainSpec:
    """Everything a rank needs to train one model on one protocol's exported samples."""

    model: str
    model_config: dict[str, Any]
    context: dict[str, Any]  # ModelContext fields except item counts
    item_counts_file: str  # .npy [n_items + 1], for log-Q correction and popularity statistics
    shards: list[tuple[str, int]]  # (Parquet file, manifest row count)
    settings: dict[str, Any]  # the `train` config section
    run_dir: str  # checkpoints/, result.json
    model_file: str  # where the trained model is written
    validation: dict[str, Any] | None = None  # {root, ds, protocol}: early stopping data
    init_file: str | None = None  # checkpoint whose weights start the run (pre-training)
    resume: bool = False
    stop_after_steps: int | None = None  # stop as if killed after this many steps (tests)

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
        """Write the spec to ``path`` and return it."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json())
        return Path(path)

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of ``last.pt`` and ``best.pt``."""
        return Path(self.run_dir) / "checkpoints"

    @property
    def result_file(self) -> Path:
        """Rank 0's summary of the run (read back by the launchers)."""
        return Path(self.run_dir) / "result.json"
