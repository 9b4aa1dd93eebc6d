"""Checkpoints: written atomically, holding the typed model config so a model rebuilds alone."""

from __future__ import annotations

import os
import pickle
from typing import Any, BinaryIO

import torch

from recpipe import storage
from recpipe.errors import RecpipeError
from recpipe.models import model_class
from recpipe.models.base import ModelContext, RecModel
from recpipe.models.user_rows import USER_ROWS_KEY
from recpipe.storage import Location, LocationLike, as_location


class CheckpointError(RecpipeError, ValueError):
    """A model file that is not a plain recpipe checkpoint (it is never unpickled)."""


FORMAT = 1
MODEL_FILE = "model.pt"  # the trained model: best weights (early stopping) or final
LAST_FILE = "last.pt"  # full training state for --resume


def save_atomic(state: dict[str, Any], location: LocationLike) -> None:
    """Write a checkpoint in one step readers never see half done (any location), streamed
    to a local file: serialising it to memory first held a second copy of the model and its
    optimizer moments (1.7 GB more at 20M events; ``bench/checkpoint.py``)."""
    storage.write_streamed(location, lambda handle: torch.save(state, handle))


def load_state(source: LocationLike | BinaryIO) -> dict[str, Any]:
    """Read a checkpoint (a location or an open binary file) as data: tensors, numbers,
    strings, lists and dicts only.

    ``weights_only=True`` refuses any other pickled object, so a planted ``model.pt`` cannot
    run code in the driver or on an executor; such a file is a :class:`CheckpointError`.
    A location is read as a stream, never whole into memory first (which held the file's bytes
    beside the tensors made from them: twice the checkpoint at the peak).
    """
    if isinstance(source, (str, os.PathLike, Location)):
        location = as_location(source)
        if not storage.is_file(location):
            raise FileNotFoundError(str(location))
        with storage.open_input(location) as handle:
            return _load(handle, str(location))
    return _load(source, getattr(source, "name", None) or str(source))


def _load(target: BinaryIO, name: str) -> dict[str, Any]:
    """:func:`load_state` of an open, seekable binary file called ``name`` in messages."""
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "refused"
        raise CheckpointError(
            f"{name} is not a plain checkpoint (tensors and plain values only): {first}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{name} does not hold a checkpoint dict")
    return state


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
    model.user_rows = state.get(USER_ROWS_KEY)
    return model.eval()


def load_model(location: LocationLike) -> RecModel:
    """Rebuild the model saved at ``location``."""
    return build_model(load_state(location))
