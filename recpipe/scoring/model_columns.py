"""Model state kept in lake tables, brought to the users being ranked.

A baseline fitted in Spark keeps what grows with users or item pairs in lake tables (ALS's user
factors, item-kNN's neighbour lists; :attr:`Baseline.spark_tables`). On the executors that state
travels as columns joined per user (:func:`with_model_columns`): a ``user_vector``, or the
user's best item-kNN candidates summed by Spark. In one process (small data, the local engines
and their parity tests) the same state is read back into memory (:func:`attach_lake_state`,
:func:`with_columns_locally`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from recpipe.artifacts import ArtifactError
from recpipe.baselines.base import Baseline
from recpipe.baselines.itemknn import ItemKnn, top_candidates
from recpipe.commit import current_version
from recpipe.lake import Lake
from recpipe.parquet_files import verified_dataset
from recpipe.schema import DS, USER_IDX, USER_VECTOR
from recpipe.scoring.distributed import vectors_from_arrow
from recpipe.scoring.histories import UserHistories
from recpipe.scoring.scorers import ModelPayload, history_matrix
from recpipe.storage import LocationLike


def _partition(ds: str, protocol: str) -> dict[str, str]:
    return {DS: ds, "protocol": protocol}


def read_user_vectors(
    root: LocationLike, table: str, ds: str, protocol: str, n_users: int, fill: float = 0.0
) -> np.ndarray:
    """[n_users, d] float32 user vectors from lake ``table`` (``fill`` for users without one),
    read in this process: for data small enough for the local engines only."""
    folder = current_version(root, table, _partition(ds, protocol))
    data = verified_dataset(folder).to_table(columns=[USER_IDX, USER_VECTOR])
    return user_vector_matrix(data, n_users, f"{table} ds={ds} protocol={protocol}", fill)


def user_vector_matrix(data: pa.Table, n_users: int, what: str, fill: float = 0.0) -> np.ndarray:
    """[n_users, d] float32 from (user_idx, user_vector) rows; ``fill`` where a user has none."""
    users = data.column(USER_IDX).to_numpy().astype(np.int64)
    vectors = vectors_from_arrow(data.column(USER_VECTOR).combine_chunks())
    if len(users) and users.max() >= n_users:
        raise ArtifactError(
            f"{what} has user_idx {users.max()} beyond the {n_users} users of its train split"
        )
    matrix = np.full((n_users, vectors.shape[1]), fill, dtype=np.float32)
    matrix[users] = vectors
    return matrix


NEIGHBOUR_COLUMNS = ("item_i", "item_j", "sim")


def _neighbour_arrays(data: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item_i, item_j, sim) arrays of an item-kNN neighbours table."""
    item_i, item_j, sim = (data.column(c).to_numpy() for c in NEIGHBOUR_COLUMNS)
    return item_i, item_j, sim


def read_neighbours(
    root: LocationLike, table: str, ds: str, protocol: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item_i, item_j, sim) of lake ``table``, read in this process (local engines only)."""
    folder = current_version(root, table, _partition(ds, protocol))
    return _neighbour_arrays(verified_dataset(folder).to_table(columns=list(NEIGHBOUR_COLUMNS)))


def attach_fitted_state(model: Baseline, n_users: int) -> None:
    """Collect the tables a just-fitted ``model`` keeps in Spark into memory, as
    :func:`attach_lake_state` reads them once published (tuning trials, never published)."""
    if model.user_vectors_table is not None:
        kept = model.spark_tables[model.user_vectors_table].frame
        data = kept.select(USER_IDX, USER_VECTOR).toArrow()
        model.attach_user_vectors(user_vector_matrix(data, n_users, model.user_vectors_table))
    if isinstance(model, ItemKnn) and model.neighbours_table is not None:
        kept = model.spark_tables[model.neighbours_table].frame
        model.attach_neighbours(*_neighbour_arrays(kept.select(*NEIGHBOUR_COLUMNS).toArrow()))


def attach_lake_state(
    model: Baseline, root: LocationLike, ds: str, protocol: str, n_users: int
) -> None:
    """Read the state ``model`` keeps in lake tables into memory (no-op for others)."""
    if model.user_vectors_table is not None:
        model.attach_user_vectors(
            read_user_vectors(root, model.user_vectors_table, ds, protocol, n_users)
        )
    if isinstance(model, ItemKnn) and model.neighbours_table is not None:
        model.attach_neighbours(*read_neighbours(root, model.neighbours_table, ds, protocol))


def with_model_columns(
    spark: SparkSession,
    root: LocationLike,
    users: DataFrame,
    payload: ModelPayload,
    ds: str,
    protocol: str,
    k: int,
    exclude_seen: bool,
) -> DataFrame:
    """``users`` (one row per ``user_idx``, with ``items``) with the columns the model's lake
    state gives each user: its ``user_vector`` (null when it has none), or its ``k`` best
    item-kNN candidates (the user's own items left out when ``exclude_seen``)."""
    lake = Lake(root)
    if payload.user_vectors_table is not None:
        vectors = lake.read(spark, payload.user_vectors_table, [_partition(ds, protocol)])
        users = users.join(vectors.select(USER_IDX, USER_VECTOR), USER_IDX, "left")
    if payload.neighbours_table is not None:
        neighbours = lake.read(spark, payload.neighbours_table, [_partition(ds, protocol)])
        users = top_candidates(users, neighbours, k, exclude_seen)
    return users


def with_columns_locally(
    root: LocationLike,
    payload: ModelPayload,
    ds: str,
    protocol: str,
    users: UserHistories,
    k: int,
    exclude_seen: bool,
) -> UserHistories:
    """``users`` with what :func:`with_model_columns` joins, computed in this process from
    the lake tables read into memory (NaN vector rows for users without one)."""
    vectors, candidates = users.vectors, users.candidates
    n_users = len(payload.train_users)
    if payload.user_vectors_table is not None:
        matrix = read_user_vectors(
            root, payload.user_vectors_table, ds, protocol, n_users, fill=np.nan
        )
        vectors = np.full((len(users), matrix.shape[1]), np.nan, dtype=np.float32)
        inside = users.users < n_users
        vectors[inside] = matrix[users.users[inside]]
    if payload.neighbours_table is not None:
        model = ItemKnn.from_files(payload.files)
        assert isinstance(model, ItemKnn)
        model.attach_neighbours(*read_neighbours(root, payload.neighbours_table, ds, protocol))
        candidates = model.top_candidates(history_matrix(users, model.n_items), k, exclude_seen)
    return UserHistories(
        users.users, users.lengths, users.items, vectors, candidates, users.trained
    )
