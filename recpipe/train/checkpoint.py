"""Checkpoints: written atomically, holding the typed model config so a model rebuilds alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from recpipe.models import model_class
from recpipe.models.base import ModelContext, RecModel

FORMAT = 1
MODEL_FILE = "model.pt"  # the trained model: best weights (early stopping) or final
LAST_FILE = "last.pt"  # full training state for --resume


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by recpipe (our own files: full unpickling is allowed)."""
    return torch.load(Path(path), map_location="cpu", weights_only=False)


def model_state(model: RecModel, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilds ``model``: name, typed config, context, weights (plus ``extra`` fields)."""
    return {
        "format": FORMAT,
        "model": model.name,
        "model_config": model.config.model_dump(mode="json"),
        "context": model.context.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }


def build_model(state: dict[str, Any]) -> RecModel:
    """A model from a checkpoint dict alone (weights loaded, eval mode)."""
    if state.get("format") != FORMAT:
        raise ValueError(f"unsupported checkpoint format {state.get('format')!r}")
    cls = model_class(state["model"])
    config = cls.config_class.model_validate(state["model_config"])
    model = cls(config, ModelContext(**state["context"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()


def load_model(path: Path) -> RecModel:
    """Rebuild the model saved at ``path``."""
    return build_model(load_state(path))
