"""item2vec: skip-gram item vectors learned from users' item sequences by Spark MLlib Word2Vec.

Barkan, Koenigstein, "Item2Vec: Neural Item Embedding for Collaborative Filtering", MLSP 2016.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pyspark.ml.feature import Word2Vec
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recpipe.baselines.base import SparkTable, SplitFacts, base_meta
from recpipe.baselines.factors import FactorBaseline, dense_rows, user_vector_rows
from recpipe.config import Item2VecConfig
from recpipe.layout import user_factors_table
from recpipe.schema import ITEM_IDX, TS, USER_IDX
from recpipe.tables import TrainData

log = logging.getLogger(__name__)
SEQUENCE = "items"


def item_sequences(train: DataFrame) -> DataFrame:
    """``(user_idx, items array<string>)``: each user's train items in time order (ties by
    item id, so the order and the fitted vectors do not depend on partitioning)."""
    ordered = F.array_sort(F.collect_list(F.struct(F.col(TS), F.col(ITEM_IDX))))
    return (
        train.groupBy(USER_IDX)
        .agg(ordered.alias("_events"))
        .select(USER_IDX, F.col(f"_events.{ITEM_IDX}").cast("array<string>").alias(SEQUENCE))
    )


def unit_item_vectors(model_vectors: DataFrame) -> DataFrame:
    """``(item_idx, vector)`` with MLlib's word vectors scaled to unit length."""
    array = vector_to_array(F.col("vector"))
    norm = F.sqrt(F.aggregate(array, F.lit(0.0), lambda acc, x: acc + x * x))
    return model_vectors.select(
        F.col("word").cast("int").alias(ITEM_IDX),
        F.transform(array, lambda x: x / F.greatest(norm, F.lit(1e-12))).alias("vector"),
    )


def recent_centroids(sequences: DataFrame, vectors: DataFrame, window: int) -> DataFrame:
    """``(user_idx, user_vector)``: the mean unit vector of each user's last ``window`` items
    (items without a vector left out; a user with none gets no row)."""
    # Spark's slice from -window returns nothing for shorter arrays: start at a position.
    start = F.greatest(F.size(SEQUENCE) - window + 1, F.lit(1))
    recent = sequences.select(
        USER_IDX, F.explode(F.slice(SEQUENCE, start, F.lit(window))).alias(ITEM_IDX)
    ).withColumn(ITEM_IDX, F.col(ITEM_IDX).cast("int"))
    joined = recent.join(vectors, ITEM_IDX).select(
        USER_IDX, F.col("vector").cast("array<double>").alias("vector")
    )
    means = joined.groupBy(USER_IDX).agg(
        Summarizer.mean(array_to_vector(F.col("vector"))).alias("mean")
    )
    return user_vector_rows(
        means.withColumn("mean", vector_to_array(F.col("mean"))), USER_IDX, "mean"
    )


class Item2Vec(FactorBaseline):
    """Scores = the user's centroid . unit item vectors (cosine to the centroid, up to its norm).

    Paper: Barkan & Koenigstein, "Item2Vec: Neural Item Embedding for Collaborative
    Filtering", MLSP 2016 (skip-gram with negative sampling over item sets). Here the
    "sentences" are each user's train items in time order and the trainer is Spark MLlib's
    ``Word2Vec`` (distributed, hierarchical softmax); a user is the mean unit vector of their
    last ``history_window`` train items, computed in Spark and written to
    ``item2vec_user_factors`` like ALS's factors. Settings: ``baselines.item2vec``.
    """

    name = "item2vec"

    @classmethod
    def fit(
        cls, data: TrainData | SplitFacts, settings: Item2VecConfig, **context: Any
    ) -> Item2Vec:
        facts = SplitFacts.of(data)
        train: DataFrame = context["train_df"]
        sequences = item_sequences(train)
        word2vec = Word2Vec(
            vectorSize=settings.vector_size,
            windowSize=settings.window_size,
            minCount=settings.min_count,
            maxIter=settings.max_iter,
            stepSize=settings.step_size,
            numPartitions=settings.num_partitions,
            maxSentenceLength=settings.max_sentence_length,
            seed=settings.seed,
            inputCol=SEQUENCE,
            outputCol="_mean_vector",
        )
        model = word2vec.fit(sequences)
        vectors = unit_item_vectors(model.getVectors())
        items = vectors.toArrow()  # item-sized: one row per item with a vector
        item_factors = dense_rows(
            items.column(ITEM_IDX).to_numpy(),
            list(items.column("vector").to_numpy(zero_copy_only=False)),
            facts.n_items + 1,
            settings.vector_size,
        )
        log.info("item2vec: vectors for %d of %d items", items.num_rows, facts.n_items)
        table = user_factors_table(cls.name)
        # Items below min_count have no vector: never recommended, like unseen items.
        known = facts.known_items & (np.abs(item_factors).sum(1) > 0)
        arrays = {"item_factors": item_factors, "known_items": known}
        fitted = cls(arrays, {**base_meta(facts, settings), "user_vectors": table})
        users = recent_centroids(sequences, vectors, settings.history_window)
        fitted.spark_tables[table] = SparkTable(users, (USER_IDX,))
        return fitted
