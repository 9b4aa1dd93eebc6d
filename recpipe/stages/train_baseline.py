"""The ``train-baseline`` stage (``train-als`` is its ALS shortcut): one model per protocol."""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.artifacts import SHA256, file_digests, model_dir
from recpipe.baselines import baseline_class
from recpipe.baselines.base import BASELINE_FILES, Baseline, SplitFacts
from recpipe.config import Config
from recpipe.lake import Lake
from recpipe.layout import TRAIN, VOCAB_ITEMS, VOCAB_USERS, scratch_root
from recpipe.manifest import StageRun
from recpipe.reconcile import ReconciliationError
from recpipe.schema import DS, ITEM_IDX, USER_IDX
from recpipe.scoring.inputs import known_items
from recpipe.serving import written_protocols
from recpipe.spark import one_row
from recpipe.stages.split import PROTOCOL
from recpipe.tables import TrainData, load_split, vocab_size

log = logging.getLogger(__name__)


def spark_split_facts(train: DataFrame, n_users: int, n_items: int) -> SplitFacts:
    """Rows and the items a train split holds, aggregated by Spark (one row per item back)."""
    known = known_items(train, n_items)
    return SplitFacts(n_users=n_users, n_items=n_items, rows=train.count(), known_items=known)


def _stage_spark_tables(
    lake: Lake, run: StageRun, fitted: Baseline, ds: str, protocol: str
) -> dict[str, Any]:
    """Write the tables a model kept in Spark to the lake (committed with the run's manifest),
    each checked to hold one row per key first."""
    records: dict[str, Any] = {}
    partition = {DS: ds, PROTOCOL: protocol}
    for table, kept in fitted.spark_tables.items():
        staged = lake.stage(kept.frame, table, partition)
        frame = staged.read(kept.frame.sparkSession)
        key = F.struct(*kept.key)
        counts = one_row(
            frame.agg(F.count(F.lit(1)).alias("rows"), F.count_distinct(key).alias("keys")),
            f"{table} {protocol}",
        )
        if counts["rows"] != counts["keys"]:
            staged.discard()
            raise ReconciliationError(
                f"{table} ds={ds} protocol={protocol}: {counts['rows']} rows for "
                f"{counts['keys']} distinct ({', '.join(kept.key)}): one row per key expected"
            )
        record = staged.publish(run)
        records[table] = {"rows": int(counts["rows"]), "path": record.get("path")}
    return records


def fit_inputs(
    spark: SparkSession | None, config: Config, ds: str, protocol: str, cls: type[Baseline]
) -> tuple[TrainData | SplitFacts, dict[str, Any]]:
    """What ``cls.fit`` takes for ``protocol``'s train split: facts and the split as a Spark
    frame for baselines fitted in Spark, else the split read into this process."""
    if cls.fits_in_spark:
        if spark is None:
            raise ValueError(f"{cls.name} is fitted in Spark: a SparkSession is needed")
        train = Lake(config.root).read(spark, TRAIN, [{DS: ds, PROTOCOL: protocol}])
        n_users = vocab_size(config.root, VOCAB_USERS, USER_IDX, ds) + 1
        n_items = vocab_size(config.root, VOCAB_ITEMS, ITEM_IDX, ds)
        context = {
            "train_df": train,
            "checkpoint_dir": scratch_root(config.root) / "checkpoints",
        }
        return spark_split_facts(train, n_users, n_items), context
    limit = config.driver.max_split_rows
    instead = "use a baseline fitted in Spark (als, itemknn, popularity)"
    return load_split(config.root, ds, protocol, TRAIN, limit, instead), {}


def run_train_baseline(spark: SparkSession, config: Config, ds: str, model: str) -> dict[str, Any]:
    """Train ``model`` on the train split of every protocol in ``split.protocols`` (and on
    every interaction of ``ds``, protocol ``all``, when served models are refit)."""
    cls = baseline_class(model)
    settings = getattr(config.baselines, model)
    lake = Lake(config.root)
    with StageRun(config, f"train-{model}", ds) as run:
        run.record.update(model=model, settings=settings.model_dump(mode="json"), protocols={})
        for protocol in written_protocols(config):
            started = time.perf_counter()
            data, context = fit_inputs(spark, config, ds, protocol, cls)
            facts = SplitFacts.of(data)
            fitted = cls.fit(data, settings, **context)
            folder = model_dir(config.root, model, ds, protocol)
            tables = _stage_spark_tables(lake, run, fitted, ds, protocol)
            fitted.save(folder)
            seconds = round(time.perf_counter() - started, 3)
            log.info("train %s on %s/train: %d rows in %.1fs", model, protocol, facts.rows, seconds)
            run.record["protocols"][protocol] = {
                "rows": facts.rows,
                "users": facts.n_users - 1,
                "items": facts.n_items,
                "fitted": "spark" if cls.fits_in_spark else "driver",
                "seconds": seconds,
                "path": str(folder),
                SHA256: file_digests(folder, BASELINE_FILES),
                **({"blas": fitted.meta["blas"]} if "blas" in fitted.meta else {}),
                **({"lake_tables": tables} if tables else {}),
            }
        run.record["rows_in"] = sum(p["rows"] for p in run.record["protocols"].values())
        run.record["rows_out"] = len(run.record["protocols"])
    return run.manifest
