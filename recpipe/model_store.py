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

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from recpipe import storage
from recpipe.artifacts import ArtifactError, read_artifacts
from recpipe.baselines import baseline_class
from recpipe.commit import current_version
from recpipe.lake import Lake
from recpipe.layout import model_dir, models_base
from recpipe.parquet_files import verified_dataset
from recpipe.registry import is_baseline
from recpipe.schema import DS, USER_IDX, USER_VECTOR
from recpipe.scoring.distributed import vectors_from_arrow
from recpipe.scoring.histories import UserHistories
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


def load_for_evaluation(
    root: LocationLike, name: str, ds: str, protocol: str, train: TrainData
) -> HistoryScorer:
    """A trained model ready to score users against the whole catalogue over their ``train``
    histories (baselines and deep models alike, through the one scorer family). User vectors
    kept in a lake table are read into memory here: this is the single-process path."""
    files = read_model_files(root, name, ds, protocol)
    if model_kind(name) == "deep":
        return evaluation_scorer(build_model(load_state(io.BytesIO(files[MODEL_FILE]))), train)
    baseline = baseline_class(name).from_files(files)
    table = baseline.user_vectors_table
    if table is not None:
        baseline.attach_user_vectors(read_user_vectors(root, table, ds, protocol, train.n_users))
    return evaluation_scorer(baseline, train)


def _vectors_partition(ds: str, protocol: str) -> dict[str, str]:
    return {DS: ds, "protocol": protocol}


def read_user_vectors(
    root: LocationLike, table: str, ds: str, protocol: str, n_users: int, fill: float = 0.0
) -> np.ndarray:
    """[n_users, d] float32 user vectors from lake ``table`` (``fill`` for users without one),
    read in this process: for data small enough for the local engines only."""
    folder = current_version(root, table, _vectors_partition(ds, protocol))
    data = verified_dataset(folder).to_table(columns=[USER_IDX, USER_VECTOR])
    users = data.column(USER_IDX).to_numpy().astype(np.int64)
    vectors = vectors_from_arrow(data.column(USER_VECTOR).combine_chunks())
    if len(users) and users.max() >= n_users:
        raise ArtifactError(
            f"{table} ds={ds} protocol={protocol} has user_idx {users.max()} beyond the "
            f"{n_users} users of its train split"
        )
    matrix = np.full((n_users, vectors.shape[1]), fill, dtype=np.float32)
    matrix[users] = vectors
    return matrix


def with_vectors_locally(
    root: LocationLike, payload: ModelPayload, ds: str, protocol: str, users: UserHistories
) -> UserHistories:
    """``users`` with the model's user vectors attached in this process (NaN rows for users
    without one) when they live in a lake table: the single-process twin of
    :func:`with_user_vectors`."""
    table = payload.user_vectors_table
    if table is None:
        return users
    n_users = len(payload.train_users)
    matrix = read_user_vectors(root, table, ds, protocol, n_users, fill=np.nan)
    vectors = np.full((len(users), matrix.shape[1]), np.nan, dtype=np.float32)
    inside = users.users < n_users
    vectors[inside] = matrix[users.users[inside]]
    return UserHistories(users.users, users.lengths, users.items, vectors)


def with_user_vectors(
    spark: SparkSession,
    root: LocationLike,
    users: DataFrame,
    payload: ModelPayload,
    ds: str,
    protocol: str,
) -> DataFrame:
    """``users`` (one row per ``user_idx``) with the model's ``user_vector`` column joined when
    its user vectors live in a lake table (null for users without one); else ``users``."""
    table = payload.user_vectors_table
    if table is None:
        return users
    vectors = Lake(root).read(spark, table, [_vectors_partition(ds, protocol)])
    return users.join(vectors.select(USER_IDX, USER_VECTOR), USER_IDX, "left")


def load_payload(root: LocationLike, ds: str, protocol: str, name: str) -> ModelPayload:
    """What the scoring job ships to executors for model ``name`` trained for ``ds`` on
    ``protocol``'s train split: the checked files plus its known items and trained users."""
    files = read_model_files(root, name, ds, protocol)
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
