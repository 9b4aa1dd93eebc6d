"""Warm start: a day's deep model begins from the latest earlier day's model of its lineage.

With ``train.warm_start.enabled`` the train stage looks, per model and protocol, for the model
trained for the latest earlier ``ds``. When it finds one with the same settings, it starts from
its weights, its id-indexed tables grown for the ids ``vocab`` added since (``vocab`` never
renumbers: old ids keep their rows, new ids get the rows a fresh model would start with), and
trains on the export's recent window only. It retrains from scratch on every sample when
there is no earlier model, the settings or sequence length changed, or the lineage's last full
retrain is ``train.warm_start.full_retrain_days`` old. Every decision is recorded with its reason
in the train manifest and in the model file (``training.start``).

The optimizer starts fresh: with AdamW's zero initial moments and ``weight_decay: 0`` (every
model's default), a row that gets no gradient in the window (a user without new data) keeps
its vector exactly.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from recpipe import storage
from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.knowledge import KG
from recpipe.layout import model_dir, models_base
from recpipe.models.base import RecModel
from recpipe.storage import Location
from recpipe.train.checkpoint import MODEL_FILE, load_state

_DS_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class WarmStartError(RecpipeError, ValueError):
    """An earlier model's weights do not fit the model being trained."""


@dataclass
class StartPlan:
    """How one model/protocol's run starts: ``full`` (fresh weights, every sample) or ``warm``."""

    mode: str
    reason: str
    full_ds: str  # the ds of the lineage's last full retrain (this ds for a full one)
    from_ds: str | None = None
    model_file: str | None = None  # the earlier model a warm start begins from
    # Its weights, read once while deciding (the grown initial state is built from them).
    previous_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def warm(self) -> bool:
        """Whether the run starts from the earlier model."""
        return self.mode == "warm"

    def record(self) -> dict[str, Any]:
        """What the manifest and the model file keep of the decision."""
        fields = {"mode": self.mode, "reason": self.reason, "full_ds": self.full_ds}
        if self.from_ds is not None:
            fields["from_ds"] = self.from_ds
        return fields

    def as_full(self, ds: str, reason: str) -> StartPlan:
        """The same run falling back to a full retrain for ``reason``."""
        return StartPlan("full", reason, full_ds=ds)


def previous_model(root: Any, name: str, ds: str, protocol: str) -> tuple[str, Location] | None:
    """(ds, model file) of ``name``'s latest model for ``protocol`` trained before ``ds``."""
    base = models_base(root) / name
    if not storage.is_dir(base):
        return None
    earlier = sorted(
        entry.name
        for entry in storage.list_dir(base)
        if entry.is_dir and _DS_FOLDER.match(entry.name) and entry.name < ds
    )
    for day in reversed(earlier):
        location = model_dir(root, name, day, protocol) / MODEL_FILE
        if storage.is_file(location):
            return day, location
    return None


def plan_start(
    config: Config, name: str, ds: str, protocol: str, model_config: dict[str, Any],
    context: dict[str, Any],
) -> StartPlan:  # fmt: skip
    """Decide whether ``name`` on ``protocol`` warm-starts for ``ds`` (see the module doc)."""
    settings = config.train.warm_start
    full = StartPlan("full", "train.warm_start.enabled is false", full_ds=ds)
    if not settings.enabled:
        return full
    found = previous_model(config.root, name, ds, protocol)
    if found is None:
        return full.as_full(ds, f"no earlier {name} model for protocol {protocol}")
    previous_ds, location = found
    state = load_state(location)
    start = (state.get("training") or {}).get("start") or {}
    full_ds = str(start.get("full_ds") or previous_ds)
    age = (dt.date.fromisoformat(ds) - dt.date.fromisoformat(full_ds)).days
    if age >= settings.full_retrain_days:
        return full.as_full(
            ds,
            f"the last full retrain ({full_ds}) is {age} day(s) old "
            f"(train.warm_start.full_retrain_days={settings.full_retrain_days})",
        )
    if state.get("model_config") != model_config:
        return full.as_full(ds, f"models.{name} settings differ from the {previous_ds} model's")
    old = state.get("context") or {}
    if old.get("max_len") != context["max_len"]:
        return full.as_full(ds, f"export.max_len differs from the {previous_ds} model's")
    if (old.get("feature_layout") or {}).get(KG) != (context.get("feature_layout") or {}).get(KG):
        return full.as_full(ds, f"the knowledge graph differs from the {previous_ds} model's")
    if old.get("n_users", 0) > context["n_users"] or old.get("n_items", 0) > context["n_items"]:
        return full.as_full(ds, f"the vocabulary is smaller than the {previous_ds} model's")
    return StartPlan(
        "warm", f"from the {previous_ds} model", full_ds=full_ds, from_ds=previous_ds,
        model_file=str(location), previous_weights=state["state_dict"],
    )  # fmt: skip


def grown_state(previous: dict[str, torch.Tensor], model: RecModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every parameter taken from ``previous``.

    A parameter whose first dimension grew (a table indexed by user or item id) keeps the old
    rows and takes ``model``'s own initial rows for the new ids. Buffers stay ``model``'s: they
    are derived from this run's data (e.g. item counts).
    """
    state = model.state_dict()
    parameters = {key for key, _ in model.named_parameters()}
    missing = sorted(parameters - set(previous))
    if missing:
        raise WarmStartError(f"the earlier model has no parameter {missing[0]!r}")
    grown: dict[str, torch.Tensor] = {}
    for key, fresh in state.items():
        old = previous.get(key)
        if key not in parameters or old is None:
            grown[key] = fresh.clone()
        elif old.shape == fresh.shape:
            grown[key] = old.clone().to(fresh.dtype)
        elif (
            old.dim() == fresh.dim()
            and old.shape[1:] == fresh.shape[1:]
            and (old.shape[0] <= fresh.shape[0])
        ):
            table = fresh.clone()
            table[: old.shape[0]] = old.to(fresh.dtype)
            grown[key] = table
        else:
            raise WarmStartError(
                f"parameter {key!r} was {tuple(old.shape)}, now {tuple(fresh.shape)}"
            )
    return grown
