"""Baselines that score by a dot product of a user vector and item vectors (ALS, NMF, item2vec).

Item vectors are in ``arrays.npz`` (item-sized); user vectors stay in Spark: the train stage
writes them to the model's ``<name>_user_factors`` lake table, and scoring and evaluation join
each user's vector as a column. Single-process use attaches them from the table.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recpipe.baselines.base import Baseline
from recpipe.layout import user_factors_table
from recpipe.schema import USER_IDX, USER_VECTOR


def dense_rows(ids: np.ndarray, vectors: list[np.ndarray], size: int, dim: int) -> np.ndarray:
    """[size, dim] float32 with ``vectors[k]`` in row ``ids[k]`` and zeros elsewhere."""
    matrix = np.zeros((size, dim), dtype=np.float32)
    if len(ids):
        matrix[ids] = np.stack(vectors)
    return matrix


def user_vector_rows(frame: DataFrame, id_column: str, vector_column: str) -> DataFrame:
    """``(user_idx int, user_vector array<float>)`` from a frame of ids and float arrays."""
    return frame.select(
        F.col(id_column).cast("int").alias(USER_IDX),
        F.col(vector_column).cast("array<float>").alias(USER_VECTOR),
    )


class FactorBaseline(Baseline):
    """Scores = user vector . item vector; user vectors in a lake table, item vectors here."""

    uses_user_ids = True
    needs_history = False
    fits_in_spark = True

    def raw_scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors()[users] @ self.arrays["item_factors"].T

    def scores_of_vectors(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float32) @ self.arrays["item_factors"].T

    def user_factors(self) -> np.ndarray:
        """[n_users, d] user vectors held in memory (attached from the lake table for
        single-process use, or saved in the arrays by an older recpipe)."""
        factors = self.arrays.get("user_factors")
        if factors is None:
            raise RuntimeError(
                f"{self.name}: the user factors are in the {user_factors_table(self.name)} table, "
                "not in memory: join them as a column or attach them with attach_user_vectors"
            )
        return factors

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.user_factors(), self.arrays["item_factors"]

    def item_factors(self) -> np.ndarray:
        return self.arrays["item_factors"]
