"""The ``score`` stage: every user's top-K from one trained model, scored on the Spark
executors and published to ``<database>.recommendations`` partition ``(ds, model)``.

The model scored is the one trained on protocol ``all`` (every interaction up to ``ds``: see
recpipe.serving) with ``score.train_on: all``, else the one trained on ``score.protocol``'s train
split; the manifest's ``trained_on`` says which. Users are everyone in the ``sessions``
partition of ``ds``; a user's history there is both the seen-items set (never recommended)
and the sequence models' input. Users the model cannot
score (no trained row, or no item it knows) get the recent popularity list, ``source =
'popular'``; the others ``source = <model>``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recpipe.artifacts import ArtifactError
from recpipe.catalogue_mix import catalogue_mix
from recpipe.config import Config
from recpipe.errors import MissingInputError, RecpipeError
from recpipe.etl.sessionize import explode_sessions
from recpipe.evaluation.ranking import users_per_block
from recpipe.lake import Lake
from recpipe.layout import SESSIONS, TRAIN, VOCAB_ITEMS, VOCAB_USERS
from recpipe.manifest import StageRun, read_manifest
from recpipe.model_store import executor_model_files, model_kind
from recpipe.schema import DS, ITEM_ID, ITEM_IDX, USER_ID, USER_IDX
from recpipe.scoring.distributed import RANK, SCORE, SOURCE, ScoreSettings, score_frame
from recpipe.scoring.inputs import history_frame, known_items, popular_list, with_trained_flag
from recpipe.scoring.memory import fitted_block_mib
from recpipe.scoring.model_columns import with_model_columns
from recpipe.scoring.scorers import ModelPayload
from recpipe.serving import ALL, serving_protocol
from recpipe.spark import executor_settings, persist_on_disk
from recpipe.stages.split import PROTOCOL
from recpipe.tables import vocab_size


def _with_ids(spark: SparkSession, config: Config, ds: str, scored: DataFrame) -> DataFrame:
    """Recommendation rows in original ids (left joins: a missing id shows up as null)."""
    lake = Lake(config.root)
    users = lake.read(spark, VOCAB_USERS, [{DS: ds}]).select(USER_IDX, USER_ID)
    items = lake.read(spark, VOCAB_ITEMS, [{DS: ds}]).select(ITEM_IDX, ITEM_ID)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0, tzinfo=None)
    return (
        scored.join(users, USER_IDX, "left")
        .join(F.broadcast(items), ITEM_IDX, "left")
        .select(
            USER_ID, ITEM_ID, RANK, SCORE, F.lit(now).cast("timestamp").alias("generated_at"),
            SOURCE, USER_IDX, ITEM_IDX,
        )
    )  # fmt: skip


def trained_on(config: Config, model_ds: str) -> dict[str, Any]:
    """What the scored model learned from: its protocol, ds and train rows (split manifest)."""
    serving = serving_protocol(config)
    split = read_manifest(config.root, "split", model_ds)
    part = split.get("protocols", {}).get(serving, {}).get(TRAIN, {})
    rule = (
        f"every interaction up to ds={model_ds}"
        if serving == ALL
        else f"the {serving} train split of ds={model_ds}"
    )
    return {"protocol": serving, "ds": model_ds, "rows": part.get("rows"), "rule": rule}


def served_model_files(config: Config, model: str, model_ds: str) -> dict[str, bytes]:
    """The checked files of the model ``score`` serves; a missing refit names the fix."""
    serving = serving_protocol(config)
    try:
        return executor_model_files(config.root, model, model_ds, serving)
    except (ArtifactError, MissingInputError) as exc:
        if serving != ALL:
            raise
        raise type(exc)(
            f"{exc} (score.train_on=all serves {model} refit on protocol all: re-run split, "
            "export and training with it, or set score.train_on=protocol)"
        ) from None


def run_score(spark: SparkSession, config: Config, ds: str, model: str) -> dict[str, Any]:
    """Score every user of ``ds`` with ``model`` on the executors and publish the top-K."""
    from recpipe.warehouse import RECOMMENDATIONS, publish_partition

    settings = config.score
    model_ds = settings.model_ds or ds
    serving = serving_protocol(config)
    with StageRun(config, f"score-{model}", ds) as run:
        files = served_model_files(config, model, model_ds)
        learned = trained_on(config, model_ds)
        n_items = vocab_size(config.root, VOCAB_ITEMS, ITEM_IDX, model_ds)
        # Before any Spark job: a block that cannot fit the executors' Python workers is a
        # config error now, not a worker killed for memory later.
        block_mib = fitted_block_mib(
            executor_settings(spark, config), settings.block_mib, "score.block_mib", n_items,
            sum(len(data) for data in files.values()) + n_items + 1,
        )  # fmt: skip
        train = Lake(config.root).read(spark, TRAIN, [{DS: model_ds, PROTOCOL: serving}])
        # Item-sized facts reach the driver; which users were trained travels as a column.
        payload = ModelPayload(
            model, model_kind(model), files, known_items(train, n_items), np.zeros(0, bool)
        )
        # State a model keeps in lake tables (user vectors, item-kNN neighbours) travels as
        # columns joined per user, never broadcast.
        histories = with_model_columns(
            spark, config.root, with_trained_flag(history_frame(spark, config.root, ds), train),
            payload, model_ds, serving, k=settings.k, exclude_seen=True,
        )  # fmt: skip
        histories = persist_on_disk(histories)
        popular = popular_list(spark, config.root, ds, settings.popular_window_days)
        block = ScoreSettings(
            k=settings.k,
            user_block=settings.user_block,
            item_block=settings.item_block,
            device=settings.device,
            dense_user_block=users_per_block(
                n_items, settings.user_block, block_mib, "score.block_mib"
            ),
        )
        scored = score_frame(spark, histories, payload, popular, block, settings.partitions)
        rows = persist_on_disk(_with_ids(spark, config, ds, scored))
        try:
            users_in = histories.count()
            by_source = {
                row[SOURCE]: (row["rows"], row["users"], row["unmapped"])
                for row in rows.groupBy(SOURCE)
                .agg(
                    F.count(F.lit(1)).alias("rows"),
                    F.count_distinct(USER_IDX).alias("users"),
                    F.sum(
                        F.when(F.col(USER_ID).isNull() | F.col(ITEM_ID).isNull(), 1).otherwise(0)
                    ).alias("unmapped"),
                )
                .collect()
            }
            unmapped = sum(v[2] for v in by_source.values())
            if unmapped:
                raise RecpipeError(
                    f"{unmapped} recommendation rows have indexes missing from vocab ds={ds}: "
                    f"re-run `recpipe vocab --ds {ds}` and the stages after it"
                )
            total = sum(v[0] for v in by_source.values())
            users_out = sum(v[1] for v in by_source.values())
            location = publish_partition(
                spark, config, RECOMMENDATIONS, rows, ds, model, expected_rows=total,
                pointer_extra={"trained_on": learned},
            )  # fmt: skip
            interactions = explode_sessions(Lake(config.root).read(spark, SESSIONS, [{DS: ds}]))
            mix = catalogue_mix(spark, config, ds, rows, interactions)
        finally:
            rows.unpersist()
            histories.unpersist()
        run.record.update(
            model=model,
            model_ds=model_ds,
            protocol=settings.protocol,
            trained_on=learned,
            k=settings.k,
            rows_in=users_in,
            rows_out=total,
            users_scored=users_out,
            users_without_recs=users_in - users_out,
            source_counts={source: v[0] for source, v in sorted(by_source.items())},
            users_by_source={source: v[1] for source, v in sorted(by_source.items())},
            popular_window=popular.describe(),
            partitions=settings.partitions or spark.sparkContext.defaultParallelism,
            device=settings.device,
            payload_bytes=payload.size_bytes,
            model_columns=[t for t in (payload.user_vectors_table, payload.neighbours_table) if t],
            location=str(location),
            seen_items_rule=f"each user's items in sessions ds={ds} excluded",
        )
        if mix is not None:
            run.record["catalogue_mix"] = mix
    return run.manifest
