"""The ``evaluate`` stage: trained models scored on ``evaluation.split`` with full ranking."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from recpipe.config import Config
from recpipe.evaluation.metrics import (
    Evaluation,
    EvaluationResult,
    beyond_accuracy,
    item_popularity,
    ranking_metrics,
)
from recpipe.evaluation.protocol import Protocol
from recpipe.evaluation.ranking import csr_from_pairs, top_k
from recpipe.manifest import StageRun
from recpipe.model_store import load_for_evaluation
from recpipe.tables import TrainData, load_split

log = logging.getLogger(__name__)


def evaluate_model(
    spark: SparkSession | None, config: Config, ds: str, protocol: str, name: str
) -> Evaluation:
    """Full-ranking evaluation of one trained model under one split protocol."""
    settings = config.evaluation
    train = load_split(config.root, ds, protocol, "train")
    truth = load_split(config.root, ds, protocol, settings.split)
    model = load_for_evaluation(config.root, name, ds, protocol, train)
    seen = csr_from_pairs(train.users, train.items, train.n_users)
    truth_csr = csr_from_pairs(truth.users, truth.items, train.n_users)
    users = np.unique(truth.users)
    ks = sorted(set(settings.ks))
    items, _ = top_k(
        model.score,
        users,
        max(ks),
        train.n_items,
        seen if settings.exclude_train_items else None,
        batch=settings.user_batch,
    )
    if settings.engine == "spark" and spark is not None:
        from recpipe.evaluation.spark_metrics import spark_ranking_metrics

        values = spark_ranking_metrics(
            _recs_frame(spark, users, items), _truth_frame(spark, truth), ks, train.n_items
        )
    else:
        values = ranking_metrics(items, truth_csr, users, ks)
    popularity = item_popularity(seen, train.n_items)
    n_train_users = len(np.unique(train.users))
    for k in ks:
        for metric, value in beyond_accuracy(items, k, popularity, n_train_users).items():
            values[(metric, k)] = value
    n_users = int(values.pop(("users", 0), len(users)))
    result = EvaluationResult(name, Protocol.from_config(protocol, settings), n_users, values)
    return Evaluation(result, users, items, popularity)


def _recs_frame(spark: SparkSession, users: np.ndarray, items: np.ndarray) -> Any:
    rows = [
        (int(user), int(item), rank + 1)
        for user, row in zip(users, items, strict=True)
        for rank, item in enumerate(row)
        if item != 0
    ]
    return spark.createDataFrame(rows, "user_idx int, item_idx int, rank int")


def _truth_frame(spark: SparkSession, truth: TrainData) -> Any:
    pairs = list(zip(truth.users.tolist(), truth.items.tolist(), strict=True))
    return spark.createDataFrame(pairs, "user_idx int, item_idx int")


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
            run.record.update(model=name, split=config.evaluation.split, results=[])
            rows: list[dict[str, Any]] = []
            for protocol in config.split.protocols:
                evaluation = evaluate_model(spark, config, ds, protocol, name)
                evaluations.append(evaluation)
                result = evaluation.result
                rows.extend(result.rows())
                run.record["results"].append(
                    {
                        "protocol": result.protocol.to_dict(),
                        "protocol_text": result.protocol.describe(),
                        "users": result.n_users,
                        "metrics": {f"{m}@{k}": v for (m, k), v in result.values.items()},
                    }
                )
            write_model_metrics(spark, config, rows, ds, name)
            run.record["rows_in"] = sum(r["users"] for r in run.record["results"])
            run.record["rows_out"] = len(rows)
        manifests.append(run.manifest)
    return manifests, evaluations
