"""Handlers of the model and query commands (train, evaluate, score, metrics, recs, sql)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from recpipe.config import Config, ConfigError
from recpipe.console import format_table
from recpipe.errors import MissingInputError
from recpipe.layout import model_dir, models_base
from recpipe.stages.gate import outcome, run_gate

log = logging.getLogger(__name__)


def trained_models(config: Config, ds: str) -> list[str]:
    """Models (baselines and deep) trained for ``ds`` under every configured protocol."""
    folder = models_base(config.root)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return [
        name
        for name in names
        if all(
            (model_dir(config.root, name, ds, p) / "meta.json").is_file()
            or (model_dir(config.root, name, ds, p) / "model.pt").is_file()
            for p in config.split.protocols
        )
    ]


def check_model_name(name: str) -> None:
    """Fail with the known names when ``name`` is neither a baseline nor a deep model."""
    from recpipe.baselines import REGISTRY
    from recpipe.models import registry

    known = sorted(REGISTRY) + sorted(registry())
    if name not in known:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(known)}")


def train_deep(
    config: Config, ds: str, models: list[str] | None, resume: bool, evaluate: bool, k: int
) -> list[dict[str, Any]]:
    """Train deep models, print a per-run summary and (after evaluation) the metric tables."""
    from recpipe.spark import get_spark
    from recpipe.stages.evaluate import print_metric_tables
    from recpipe.stages.train import run_train

    # TorchDistributor needs the session; evaluation writes model_metrics through it.
    spark = get_spark(config) if evaluate or config.train.launcher == "spark" else None
    manifests, evaluations = run_train(spark, config, ds, models, resume, evaluate)
    rows = []
    for manifest in manifests:
        for protocol, info in manifest.get("protocols", {}).items():
            if "epochs_run" not in info:
                continue
            rows.append(
                {
                    "model": manifest["model"],
                    "protocol": protocol,
                    "launcher": f"{manifest['launcher']} x{info['world_size']}",
                    "epochs": info["epochs_run"],
                    "best_epoch": info.get("best_epoch"),
                    "valid": info.get("best_valid_metric"),
                    "rows/s": round(info["rows_per_second"]),
                    "seconds": info["wall_seconds"],
                }
            )
    metric = f"{config.train.early_stopping.metric}@{config.train.early_stopping.k}"
    print(format_table(rows, title=f"trained deep models (ds={ds}; valid = {metric} on the "
                       "valid split, full ranking, train items excluded)"))
    if evaluations:
        print()
        print_metric_tables(evaluations, k)
    return manifests


def train(config: Config, ds: str, model: str) -> dict[str, Any]:
    """Train one baseline; prints a per-protocol summary."""
    from recpipe.spark import get_spark
    from recpipe.stages.train_baseline import run_train_baseline

    manifest = run_train_baseline(get_spark(config), config, ds, model)
    rows = [{"protocol": p, **info} for p, info in manifest["protocols"].items()]
    for row in rows:
        row.pop("path", None)
    print(format_table(rows, title=f"trained {model} (ds={ds})"))
    return manifest


def evaluate(
    config: Config, ds: str, models: list[str] | None, k: int, gate: bool = True
) -> list[Any]:
    """Evaluate models and print one metrics table per protocol, then the gate's decision when
    its candidate and baseline have metrics; returns the evaluations."""
    from recpipe.spark import get_spark
    from recpipe.stages.evaluate import print_metric_tables, run_evaluate

    for name in models or []:
        check_model_name(name)
    chosen = models or trained_models(config, ds)
    if not chosen:
        raise MissingInputError(f"no trained models for ds={ds}: run `recpipe train-baseline`")
    _, evaluations = run_evaluate(get_spark(config), config, ds, chosen)
    print_metric_tables(evaluations, k)
    if gate:
        try:
            decision = run_gate(config, ds)
        except MissingInputError as exc:
            print(f"gate: not decided ({exc})")
        else:
            print(outcome(decision))
    return evaluations


def gate_choice(config: Config, ds: str) -> str:
    """The model the gate picks for ``ds`` (from ``model_metrics``)."""
    from recpipe.query import metric_rows
    from recpipe.stages.gate import decide

    decision = decide(config, metric_rows(config, ds, None))
    print(outcome(decision.to_dict()))
    return decision.published


def gate(config: Config, ds: str) -> dict[str, Any]:
    """Decide the gate for ``ds`` and print the decision (a failing gate is not an error)."""
    manifest = run_gate(config, ds)
    print(outcome(manifest))
    return manifest


def publish(config: Config, ds: str) -> dict[str, Any]:
    """Publish the gate's choice for ``ds`` and print what went where."""
    from recpipe.spark import get_spark
    from recpipe.stages.publish import run_publish

    manifest = run_publish(get_spark(config), config, ds)
    decision = manifest["gate"]
    print(outcome(decision))
    counts = ", ".join(f"{k} {v:,}" for k, v in (manifest.get("source_counts") or {}).items())
    print(
        f"published {manifest['published_model']} as recommendations model="
        f"{manifest['partition']} ds={ds}: {manifest['rows_out']:,} rows ({counts}) -> "
        f"{manifest['location']}"
    )
    return manifest


def score(config: Config, ds: str, model: str) -> dict[str, Any]:
    """Score and publish one model; prints where the partition went."""
    from recpipe.spark import get_spark
    from recpipe.stages.score import run_score

    check_model_name(model)
    manifest = run_score(get_spark(config), config, ds, model)
    rows = [
        {"source": source, "users": manifest["users_by_source"][source], "rows": rows}
        for source, rows in manifest["source_counts"].items()
    ]
    print(format_table(rows, title=f"score {model} (model ds {manifest['model_ds']}, protocol "
                       f"{manifest['protocol']}, top-{manifest['k']}, each user's history "
                       f"excluded) for ds {ds}"))
    print(f"published {manifest['rows_out']:,} rows for {manifest['users_scored']:,} users -> "
          f"{manifest['location']}")
    return manifest


def print_metrics(config: Config, args: argparse.Namespace) -> int:
    """``recpipe metrics``: the table, or JSON (a list of row objects)."""
    from recpipe.query import metric_rows

    rows = metric_rows(config, args.ds, args.model)
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no model_metrics rows match")
        return 0
    title = (
        "recpipe.model_metrics (protocol/split as recorded; full ranking over all items, "
        "train items excluded unless the manifest says otherwise)"
    )
    print(format_table(rows, title=title))
    return 0


def print_recs(config: Config, args: argparse.Namespace) -> int:
    """``recpipe recs``: one user's list from the warehouse Parquet files."""
    from recpipe.query import format_recs, lookup_recs

    rows = lookup_recs(config, args.user, model=args.model, ds=args.ds, k=args.k)
    print(format_recs(rows, args.format))
    return 0


def print_sql(config: Config, args: argparse.Namespace) -> int:
    """``recpipe sql``: Spark SQL against the configured catalog."""
    from recpipe.lake_catalog import sync_lake_tables
    from recpipe.query import run_sql
    from recpipe.spark import get_spark
    from recpipe.warehouse import ensure_tables

    spark = get_spark(config)
    ensure_tables(spark, config)
    sync_lake_tables(spark, config)  # lake tables as committed by the manifests
    if args.admin:
        log.warning("recpipe sql --admin: the statement runs unchecked")
    rows = run_sql(spark, args.query, admin=args.admin)
    print(json.dumps(rows, indent=2) if args.format == "json" else format_table(rows))
    return 0
