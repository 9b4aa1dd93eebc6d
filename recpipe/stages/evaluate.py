"""The ``evaluate`` stage: trained models scored on ``evaluation.split`` with full ranking."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recpipe.config import Config
from recpipe.errors import RecpipeError
from recpipe.evaluation.activity import ActivityGroups, activity_groups
from recpipe.evaluation.bootstrap import resample_means
from recpipe.evaluation.diversity import ILD, item_value_masks, local_intra_list_diversity
from recpipe.evaluation.metrics import (
    USERS_KEY,
    Evaluation,
    EvaluationResult,
    MetricValues,
    beyond_accuracy_of_counts,
    item_popularity,
    per_user_ranking_metrics,
    recommendation_counts,
    user_means,
)
from recpipe.evaluation.protocol import Protocol
from recpipe.evaluation.ranking import PAD_ITEM, csr_from_pairs, top_k, users_per_block
from recpipe.evaluation.segments import Segments, local_segments, profile_labels
from recpipe.lake import Lake
from recpipe.layout import TEST, TRAIN, VALID, VOCAB_ITEMS
from recpipe.manifest import StageRun
from recpipe.model_store import executor_model_files, load_for_evaluation, model_kind
from recpipe.schema import DS, ITEM_IDX, TS, USER_IDX
from recpipe.scoring.scorers import ModelPayload
from recpipe.spark import persist_on_disk
from recpipe.stages.split import PROTOCOL
from recpipe.tables import load_split, split_rows, vocab_size

log = logging.getLogger(__name__)
BLOCK_KEY = "evaluation.block_mib"


def history_parts(config: Config) -> tuple[str, ...]:
    """The split parts a user's known history is made of when ``evaluation.split`` is scored:
    train, plus valid when test is scored (valid interactions precede the test ones, and a
    known item recommended again must not count as a miss)."""
    return (TRAIN, VALID) if config.evaluation.split == TEST else (TRAIN,)


def choose_engine(config: Config, ds: str, protocol: str, spark: SparkSession | None) -> str:
    """``local`` or ``spark``: ``evaluation.engine``, or for ``auto`` the local engine while the
    history and scored splits together hold at most ``evaluation.local_max_rows`` rows
    (counted from the Parquet footers) or when there is no Spark session."""
    settings = config.evaluation
    if settings.engine != "auto":
        return settings.engine
    if spark is None:
        return "local"
    parts = {*history_parts(config), settings.split}
    rows = sum(split_rows(config.root, ds, protocol, part) for part in parts)
    return "local" if rows <= settings.local_max_rows else "spark"


def evaluate_model(
    spark: SparkSession | None,
    config: Config,
    ds: str,
    protocol: str,
    name: str,
    engine: str | None = None,
) -> Evaluation:
    """Full-ranking evaluation of one trained model under one split protocol, on ``engine``
    (by default the one :func:`choose_engine` picks); both give the same numbers."""
    engine = engine or choose_engine(config, ds, protocol, spark)
    if engine == "spark":
        if spark is None:
            raise RecpipeError("evaluation.engine=spark needs a Spark session")
        return _evaluate_on_spark(spark, config, ds, protocol, name)
    return _evaluate_locally(config, ds, protocol, name)


def _evaluate_locally(config: Config, ds: str, protocol: str, name: str) -> Evaluation:
    """Both splits read into this process; users ranked block by block here."""
    settings = config.evaluation
    limit = config.driver.max_split_rows
    instead = "use evaluation.engine=spark (or auto)"
    train = load_split(config.root, ds, protocol, TRAIN, limit, instead)
    history = train
    for part in history_parts(config)[1:]:
        history = history.plus(load_split(config.root, ds, protocol, part, limit, instead))
    truth = load_split(config.root, ds, protocol, settings.split, limit, instead)
    model = load_for_evaluation(config.root, name, ds, protocol, train, history)
    seen = csr_from_pairs(history.users, history.items, train.n_users)
    truth_csr = csr_from_pairs(truth.users, truth.items, train.n_users)
    users = np.unique(truth.users)
    ks = sorted(set(settings.ks))
    items, _ = top_k(
        model.score,
        users,
        max(ks),
        train.n_items,
        seen if settings.exclude_train_items else None,
        batch=users_per_block(train.n_items, settings.user_batch, settings.block_mib, BLOCK_KEY),
    )
    evaluated, per_user = per_user_ranking_metrics(items, truth_csr, users, ks)
    values = user_means(evaluated, per_user)
    masks = item_value_masks(config, ds)
    if masks is not None:
        ild = local_intra_list_diversity(items, masks, ks)
        values.update({(ILD, k): v for k, v in ild.items()})
    # Activity: rows of known history per user (repeats counted, as the Spark engine counts).
    lengths = np.bincount(history.users, minlength=int(evaluated.max(initial=0)) + 1)
    groups = activity_groups(lengths[evaluated], per_user)
    labels = profile_labels(config, ds, evaluated)
    segments = local_segments(labels, per_user) if labels else None
    boot = settings.bootstrap
    resamples = resample_means(evaluated, per_user, boot.resamples, boot.seed)
    train_csr = csr_from_pairs(train.users, train.items, train.n_users)
    popularity = item_popularity(train_csr, train.n_items)
    counts = {k: recommendation_counts(items, k, train.n_items) for k in ks}
    n_train_users = len(np.unique(train.users))
    return _evaluation(
        name, protocol, config, values, resamples, counts, popularity, n_train_users, "local",
        groups, segments,
    )  # fmt: skip


def _evaluate_on_spark(
    spark: SparkSession, config: Config, ds: str, protocol: str, name: str
) -> Evaluation:
    """Splits read by Spark, users ranked on the executors, metrics aggregated by Spark; the
    driver holds item-sized arrays only."""
    from recpipe.catalogue_mix import intra_list_diversity, item_index_values
    from recpipe.evaluation.spark_metrics import ACTIVITY, spark_ranking_metrics
    from recpipe.evaluation.spark_ranking import (
        RankSettings,
        item_side,
        rank_on_executors,
        top_item_counts,
        train_histories,
    )
    from recpipe.evaluation.spark_segments import profile_segment_frame
    from recpipe.scoring.memory import fitted_block_mib
    from recpipe.scoring.model_columns import with_model_columns
    from recpipe.spark import executor_settings

    settings = config.evaluation
    lake = Lake(config.root)
    partition = [{DS: ds, PROTOCOL: protocol}]
    train = lake.read(spark, TRAIN, partition).select(USER_IDX, ITEM_IDX, TS)
    history = train
    for part in history_parts(config)[1:]:
        history = history.unionByName(lake.read(spark, part, partition).select(*train.columns))
    truth = lake.read(spark, settings.split, partition).select(USER_IDX, ITEM_IDX)
    n_items = vocab_size(config.root, VOCAB_ITEMS, ITEM_IDX, ds)
    files = executor_model_files(config.root, name, ds, protocol)
    # Before any Spark job: the files and the known-items mask are what is broadcast.
    block_mib = fitted_block_mib(
        executor_settings(spark, config),
        settings.block_mib,
        BLOCK_KEY,
        n_items,
        sum(len(data) for data in files.values()) + n_items + 1,
    )
    items = item_side(train, n_items)
    # Evaluation ranks every truth user, so no trained-user mask travels.
    payload = ModelPayload(
        name, model_kind(name), files, items.known_items, np.zeros(0, dtype=bool)
    )
    ks = sorted(set(settings.ks))
    ranking = RankSettings(
        k=max(ks),
        n_items=n_items,
        user_batch=users_per_block(n_items, settings.user_batch, block_mib, BLOCK_KEY),
        exclude_seen=settings.exclude_train_items,
    )
    users = truth.select(USER_IDX).distinct().join(train_histories(history), USER_IDX, "left")
    users = with_model_columns(
        spark, config.root, users, payload, ds, protocol, ranking.k, ranking.exclude_seen
    )
    recs = rank_on_executors(spark, users, payload, ranking, settings.partitions)
    # users x K rows in `evaluation.partitions` blocks: they grow with users, so disk only.
    recs = persist_on_disk(recs)
    try:
        boot = settings.bootstrap
        activity = history.groupBy(USER_IDX).agg(F.count(F.lit(1)).alias(ACTIVITY))
        profiled = profile_segment_frame(spark, config, ds)
        profiles = None if profiled is None else (profiled, settings.profile_groups)
        values, resamples, groups, segments = spark_ranking_metrics(
            recs, truth, ks, n_items, (boot.resamples, boot.seed), activity, profiles
        )
        counts = top_item_counts(recs, ks, n_items)
        attribute = config.catalog.mix_attribute
        values_by_item = item_index_values(spark, config, ds, attribute) if attribute else None
        if values_by_item is not None:
            listed = recs.where(F.col(ITEM_IDX) != PAD_ITEM)
            ild = intra_list_diversity(listed, values_by_item, ks, ITEM_IDX)
            values.update({(ILD, k): float("nan") if v is None else v for k, v in ild.items()})
    finally:
        recs.unpersist()
    return _evaluation(
        name, protocol, config, values, resamples, counts, items.popularity,
        items.n_train_users, "spark", groups, segments,
    )  # fmt: skip


def _evaluation(
    name: str,
    protocol: str,
    config: Config,
    values: MetricValues,
    resamples: dict[tuple[str, int], np.ndarray],
    counts: dict[int, np.ndarray],
    popularity: np.ndarray,
    n_train_users: int,
    engine: str,
    groups: ActivityGroups | None = None,
    segments: list[Segments] | None = None,
) -> Evaluation:
    """The result both engines end with: beyond-accuracy metrics from the per-item counts."""
    for k, per_item in counts.items():
        values.update(
            {
                (m, k): v
                for m, v in beyond_accuracy_of_counts(
                    per_item, popularity, max(1, n_train_users)
                ).items()
            }
        )
    n_users = int(values.pop(USERS_KEY, 0))
    result = EvaluationResult(
        name,
        Protocol.from_config(protocol, config.evaluation),
        n_users,
        values,
        resamples,
        config.evaluation.bootstrap.confidence,
        groups,
        segments,
    )
    log.info("evaluate %s on %s: %s engine, %d users", name, protocol, engine, n_users)
    return Evaluation(result, counts, popularity)


def run_evaluate(
    spark: SparkSession, config: Config, ds: str, models: list[str]
) -> tuple[list[dict[str, Any]], list[Evaluation]]:
    """Evaluate ``models`` under every protocol in ``split.protocols``.

    Each model gets its manifest ``evaluate-<model>`` (metrics with their protocol) and its
    ``(ds, model)`` partition of ``model_metrics``.
    """
    from recpipe.warehouse import write_model_metrics

    manifests: list[dict[str, Any]] = []
    evaluations: list[Evaluation] = []
    for name in models:
        with StageRun(config, f"evaluate-{name}", ds) as run:
            run.record.update(
                model=name,
                split=config.evaluation.split,
                bootstrap=config.evaluation.bootstrap.model_dump(),
                results=[],
            )
            rows: list[dict[str, Any]] = []
            for protocol in config.split.protocols:
                engine = choose_engine(config, ds, protocol, spark)
                run.record.setdefault("engines", {})[protocol] = engine
                evaluation = evaluate_model(spark, config, ds, protocol, name, engine)
                evaluations.append(evaluation)
                result = evaluation.result
                rows.extend(result.rows())
                run.record["results"].append(
                    {
                        "protocol": result.protocol.to_dict(),
                        "protocol_text": result.protocol.describe(),
                        "users": result.n_users,
                        "metrics": {f"{m}@{k}": v for (m, k), v in result.values.items()},
                        "intervals": _intervals(result),
                        **(
                            {"by_activity": result.groups.to_dict()}
                            if result.groups is not None
                            else {}
                        ),
                        **(
                            {"by_profile": {s.attribute: s.to_dict() for s in result.segments}}
                            if result.segments
                            else {}
                        ),
                    }
                )
            write_model_metrics(spark, config, rows, ds, name)
            run.record["rows_in"] = sum(r["users"] for r in run.record["results"])
            run.record["rows_out"] = len(rows)
        manifests.append(run.manifest)
    return manifests, evaluations


def _intervals(result: EvaluationResult) -> dict[str, list[float]]:
    """``metric@k`` -> [low, high] of every metric with bootstrap resamples."""
    intervals = {}
    for key in result.values:
        interval = result.interval(key)
        if interval is not None:
            intervals[f"{key[0]}@{key[1]}"] = [interval.low, interval.high]
    return intervals
