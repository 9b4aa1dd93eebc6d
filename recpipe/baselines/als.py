"""Implicit ALS with Spark MLlib (Hu, Koren, Volinsky, "Collaborative Filtering for Implicit
Feedback Datasets", ICDM 2008): preference 1 for observed pairs with confidence
1 + alpha * weight, where weight sums the configured weight of each event of the pair."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
from pyspark.ml.recommendation import ALS
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.baselines.base import SparkTable, SplitFacts, base_meta
from recpipe.baselines.factors import FactorBaseline, dense_rows, user_vector_rows
from recpipe.config import AlsConfig
from recpipe.layout import user_factors_table
from recpipe.schema import EVENT_TYPE, ITEM_IDX, USER_IDX, VALUE
from recpipe.storage import as_location
from recpipe.tables import TrainData
from recpipe.task_memory import als_intermediate_storage, check_als_blocks_fit, session_task_memory

log = logging.getLogger(__name__)
WEIGHT = "weight"


def blas_in_use(spark: SparkSession) -> str:
    """Name of the BLAS implementation MLlib's JVM picked (native when a system BLAS loads)."""
    try:
        jvm = spark.sparkContext._jvm
        if jvm is None:
            raise RuntimeError("the SparkContext has no JVM (stopped?)")
        return str(jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName())
    except Exception as exc:  # pragma: no cover - depends on the Spark build
        return f"unknown ({type(exc).__name__})"


def event_weight(settings: AlsConfig) -> Column:
    """Weight of one interaction from its event type (or its value for ratings, if configured)."""
    weight = F.lit(0.0)
    for name, value in settings.event_weights.items():
        weight = F.when(F.col(EVENT_TYPE) == name, F.lit(value)).otherwise(weight)
    if settings.rating_as_weight:
        weight = F.when(F.col(EVENT_TYPE) == "rating", F.col(VALUE)).otherwise(weight)
    return weight


def als_ratings(train: DataFrame, settings: AlsConfig) -> DataFrame:
    """(user_idx, item_idx, weight) with the weights of each pair summed; zero weights dropped."""
    return (
        train.select(USER_IDX, ITEM_IDX, event_weight(settings).alias(WEIGHT))
        .groupBy(USER_IDX, ITEM_IDX)
        .agg(F.sum(WEIGHT).alias(WEIGHT))
        .where(F.col(WEIGHT) > 0)
    )


def _factors(frame: DataFrame, size: int, rank: int) -> np.ndarray:
    table = frame.toArrow()
    vectors = list(table.column("features").to_numpy(zero_copy_only=False))
    return dense_rows(table.column("id").to_numpy(), vectors, size, rank)


def user_factor_rows(model_user_factors: DataFrame) -> DataFrame:
    """MLlib's ``(id, features)`` user factors as ``(user_idx int, user_vector array<float>)``."""
    return user_vector_rows(model_user_factors, "id", "features")


class Als(FactorBaseline):
    """Scores = user factors . item factors.

    Fitted in Spark, the user factors stay there: :attr:`spark_tables` (written by the train
    stage to the ``als_user_factors`` lake table) and never reach the driver; scoring and evaluation
    join them to the users they rank. Only the item factors are in ``arrays.npz``. Models saved
    before kept ``user_factors`` in their arrays and still load.
    """

    name = "als"
    nonnegative: ClassVar[bool] = False  # NNLS instead of least squares per factor update

    @classmethod
    def fit(cls, data: TrainData | SplitFacts, settings: AlsConfig, **context: Any) -> Als:
        facts = SplitFacts.of(data)
        train: DataFrame = context["train_df"]
        spark = train.sparkSession
        log.info("als: MLlib BLAS implementation %s", blas_in_use(spark))
        checkpoints = context.get("checkpoint_dir")  # a location under paths.root
        if checkpoints:
            spark.sparkContext.setCheckpointDir(as_location(checkpoints).uri)
        # The train rows bound the (user, item) ratings from above: no count job needed.
        check_als_blocks_fit(spark, cls.name, facts.rows, {
            f"baselines.{cls.name}.num_user_blocks": settings.num_user_blocks,
            f"baselines.{cls.name}.num_item_blocks": settings.num_item_blocks,
        })  # fmt: skip
        storage, why = als_intermediate_storage(
            f"baselines.{cls.name}.intermediate_storage",
            settings.intermediate_storage,
            session_task_memory(spark),
            facts.n_users,
            facts.n_items,
            settings.rank,
        )
        log.info("%s: iterations cached %s (%s)", cls.name, storage, why)
        als = ALS(
            rank=settings.rank,
            maxIter=settings.max_iter,
            regParam=settings.reg_param,
            alpha=settings.alpha,
            implicitPrefs=True,
            nonnegative=cls.nonnegative,
            checkpointInterval=settings.checkpoint_interval,
            numUserBlocks=settings.num_user_blocks,
            numItemBlocks=settings.num_item_blocks,
            seed=settings.seed,
            # The fitted factors stay persisted for as long as the model lives (the user
            # factors until the train stage has written them, while the next protocol fits):
            # on disk they take no heap from that fit (1.1M users x 64 floats at 50M events).
            finalStorageLevel="DISK_ONLY",
            # The blocks and the factors of every iteration; cached in memory they leave the
            # arrays each task builds (memory Spark does not track) too little heap in a small
            # JVM with many users (50M events: 1.1M users x 64 in a 1 GB local driver), so
            # `auto` puts them on disk once the factors outgrow a task's memory.
            intermediateStorageLevel=storage,
            userCol=USER_IDX,
            itemCol=ITEM_IDX,
            ratingCol=WEIGHT,
            coldStartStrategy="drop",
        )
        model = als.fit(als_ratings(train, settings))
        arrays = {
            "item_factors": _factors(model.itemFactors, facts.n_items + 1, settings.rank),
            "known_items": facts.known_items,
        }
        table = user_factors_table(cls.name)
        meta = {
            **base_meta(facts, settings),
            "blas": blas_in_use(spark),
            "user_vectors": table,
            "intermediate_storage": storage,
        }
        fitted = cls(arrays, meta)
        fitted.spark_tables[table] = SparkTable(user_factor_rows(model.userFactors), (USER_IDX,))
        return fitted


class Nmf(Als):
    """Non-negative matrix factorisation of the implicit-feedback matrix: ALS whose every
    factor update is a non-negative least-squares solve (MLlib ``nonnegative=True``).

    The factorisation of Lee & Seung ("Learning the parts of objects by non-negative matrix
    factorization", Nature 1999) fitted with Hu et al.'s confidence weighting, so its factors
    read as additive parts; settings are ``baselines.nmf`` (the ALS fields).
    """

    name = "nmf"
    nonnegative = True
