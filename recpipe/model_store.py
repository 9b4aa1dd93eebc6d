"""The one model store: trained models (baselines and deep) found, checked and loaded by name.

Every caller asks by ``(name, ds, protocol)``; the model table (recpipe.registry) says what a
model is, never the folder's contents, and the files are checked against the SHA-256 their
training run recorded (recpipe.artifacts) before anything is rebuilt from them. Nothing is
unpickled: baselines are ``.npz`` + JSON, deep models ``weights_only`` checkpoints.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

from recpipe import storage
from recpipe.artifacts import read_artifacts, recorded_digests
from recpipe.baselines import baseline_class
from recpipe.layout import model_dir, models_base
from recpipe.models.user_rows import ITEM_SIDE_FILE
from recpipe.registry import is_baseline
from recpipe.scoring.model_columns import attach_lake_state
from recpipe.scoring.scorers import HistoryScorer, ModelPayload, evaluation_scorer
from recpipe.storage import LocationLike
from recpipe.tables import TrainData, split_presence
from recpipe.train.checkpoint import MODEL_FILE, build_model, load_state

Kind = Literal["deep", "baseline"]


def model_kind(name: str) -> Kind:
    """``baseline`` for a registered baseline, else ``deep`` (registered or plug-in)."""
    return "baseline" if is_baseline(name) else "deep"


def read_model_files(root: LocationLike, name: str, ds: str, protocol: str) -> dict[str, bytes]:
    """The checked files of model ``name`` trained for ``ds`` on ``protocol``."""
    return read_artifacts(root, name, ds, protocol, model_kind(name))


def executor_model_files(root: LocationLike, name: str, ds: str, protocol: str) -> dict[str, bytes]:
    """The checked files executors rebuild model ``name`` from: a deep model's item-side
    checkpoint when its training wrote the user tables to a lake table (they then travel as a
    column), else the model's files."""
    if model_kind(name) == "deep" and ITEM_SIDE_FILE in recorded_digests(root, name, ds, protocol):
        return read_artifacts(root, name, ds, protocol, "deep", names=(ITEM_SIDE_FILE,))
    return read_model_files(root, name, ds, protocol)


def load_for_evaluation(
    root: LocationLike,
    name: str,
    ds: str,
    protocol: str,
    train: TrainData,
    history: TrainData | None = None,
) -> HistoryScorer:
    """A trained model ready to score users against the whole catalogue over their
    ``history`` (by default their ``train`` interactions; baselines and deep models alike,
    through the one scorer family). State a baseline keeps in lake tables is read into memory
    here: this is the single-process path."""
    files = read_model_files(root, name, ds, protocol)
    if model_kind(name) == "deep":
        model = build_model(load_state(io.BytesIO(files[MODEL_FILE])))
        return evaluation_scorer(model, train, history=history)
    baseline = baseline_class(name).from_files(files)
    attach_lake_state(baseline, root, ds, protocol, train.n_users)
    return evaluation_scorer(baseline, train, history=history)


def load_payload(root: LocationLike, ds: str, protocol: str, name: str) -> ModelPayload:
    """Model ``name`` trained for ``ds`` on ``protocol``'s train split as one process scores
    it: the checked files plus its known items and trained users, streamed from the split
    (the score stage builds the same from Spark, the users as a column)."""
    files = executor_model_files(root, name, ds, protocol)
    users, items = split_presence(root, ds, protocol, "train")
    return ModelPayload(name, model_kind(name), files, items, users)


def trained_models(root: LocationLike, ds: str, protocols: Sequence[str]) -> list[str]:
    """Models (baselines and deep) trained for ``ds`` under every protocol in ``protocols``."""
    names = sorted(e.name for e in storage.list_dir(models_base(root)) if e.is_dir)
    return [name for name in names if all(_trained(root, name, ds, p) for p in protocols)]


def _trained(root: LocationLike, name: str, ds: str, protocol: str) -> bool:
    """Whether the model folder holds a baseline's ``meta.json`` or a deep ``model.pt``."""
    files = {e.name for e in storage.list_dir(model_dir(root, name, ds, protocol)) if not e.is_dir}
    return bool(files & {"meta.json", MODEL_FILE})
