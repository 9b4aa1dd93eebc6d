"""What each command prints: a summary table per pipeline step, and the query commands."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from recpipe.config import Config
from recpipe.console import format_table
from recpipe.pipeline import StepContext, StepResult
from recpipe.registry import is_baseline

log = logging.getLogger(__name__)

Manifest = dict[str, Any]


def stage_summary_rows(manifests: Sequence[Manifest]) -> list[dict[str, Any]]:
    """One summary row per stage manifest: rows in/out, users, items, sessions, seconds."""
    return [
        {
            "stage": m["stage"],
            "ds": m["ds"],
            "rows_in": m.get("rows_in"),
            "rows_out": m.get("rows_out"),
            "quarantined": m.get("rows_quarantined"),
            "duplicates": m.get("rows_duplicate"),
            "users": m.get("n_users", m.get("users")),
            "items": m.get("n_items"),
            "sessions": m.get("sessions"),
            "seconds": round(m["seconds"], 1) if "seconds" in m else None,
        }
        for m in manifests
    ]


def split_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per protocol and part of a split manifest."""
    return [
        {"protocol": protocol, "part": part, **info[part]}  # rows, users
        for protocol, info in manifest.get("protocols", {}).items()
        for part in ("train", "valid", "test")
    ]


def print_stage_report(manifests: Sequence[Manifest]) -> None:
    """Summary table (and per-stage details) printed at the end of a command."""
    print(format_table(stage_summary_rows(manifests), title="recpipe stage summary"))
    for m in manifests:
        if m.get("quarantine_by_reason"):
            reasons = [{"reason": k, "rows": v} for k, v in m["quarantine_by_reason"].items()]
            print()
            print(format_table(reasons, title=f"quarantine by reason (ds={m['ds']})"))
        if m["stage"] == "split" and m.get("protocols"):
            print()
            print(format_table(split_rows(m), title=f"splits (ds={m['ds']})"))
        if m["stage"] == "catalog" and m.get("inputs"):
            print()
            print(format_table(catalog_rows(m), title=f"catalogue inputs (ds={m['ds']})"))
        if m["stage"] == "features" and m.get("features"):
            print()
            print(format_table(feature_rows(m), title=f"features (ds={m['ds']})"))


def catalog_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per reference input of a catalog manifest, its quarantine reasons in one cell."""
    return [
        {
            "input": name,
            "table": info["table"],
            "rows_in": info["rows_in"],
            "rows_out": info["rows_out"],
            "quarantined": info["rows_quarantined"],
            "duplicates": info["rows_duplicate"],
            "reasons": ", ".join(f"{k} {v}" for k, v in info["quarantine_by_reason"].items()),
        }
        for name, info in manifest["inputs"].items()
    ]


def feature_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """One row per feature of a features manifest: coverage, vocabulary and scale (a count
    left at its default, 0, is not written to the manifest)."""
    rows = []
    for name, stats in manifest["features"].items():
        info = {"rows_invalid": 0, "oov_values": 0, "truncated_rows": 0, **stats}
        vocabulary, new = info.get("vocabulary"), info.get("new_values")
        scale = ""
        if info.get("boundaries") is not None:
            scale = "edges " + " ".join(f"{edge:g}" for edge in info["boundaries"])
        elif info.get("mean") is not None:
            scale = f"mean {info['mean']:.4g} std {info['std']:.4g}"
        rows.append(
            {
                "feature": name,
                "kind": info["kind"],
                "field": info["field"],
                "with value": info["rows_with_value"],
                "missing": info["rows_missing"],
                "invalid": info["rows_invalid"],
                "out of vocab": info["oov_values"],
                "cut to width": info["truncated_rows"],
                "values (new)": "" if vocabulary is None else f"{vocabulary} ({new})",
                "scale": scale,
            }
        )
    return rows


def print_metric_tables(evaluations: Sequence[Any], k: int) -> None:
    """One table per protocol at ``k``, each titled with its full protocol."""
    from recpipe.evaluation.metrics import group_by_protocol, metrics_table

    for group in group_by_protocol(evaluations).values():
        print(metrics_table([evaluation.result for evaluation in group], k))
        print()


def _report_stages(ctx: StepContext, result: StepResult) -> None:
    if result.manifests:
        print_stage_report(result.manifests)
    for note in result.notes:  # a step that chose not to run (catalog without inputs)
        print(note)


def _report_train_baseline(ctx: StepContext, result: StepResult) -> None:
    for manifest in result.manifests:
        rows = [{"protocol": p, **info} for p, info in manifest["protocols"].items()]
        for row in rows:
            row.pop("path", None)
        print(format_table(rows, title=f"trained {manifest['model']} (ds={ctx.ds})"))


def _report_train(ctx: StepContext, result: StepResult) -> None:
    rows = []
    for manifest in result.manifests:
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
    early = ctx.config.train.early_stopping
    print(
        format_table(
            rows,
            title=f"trained deep models (ds={ctx.ds}; valid = {early.metric}@"
            f"{early.k} on the valid split, full ranking, train items excluded)",
        )
    )
    if result.evaluations:
        print()
        print_metric_tables(result.evaluations, int(ctx.options.get("k", 10)))


def _report_evaluate(ctx: StepContext, result: StepResult) -> None:
    from recpipe.stages.gate import GATE_STAGE, outcome

    print_metric_tables(result.evaluations, int(ctx.options.get("k", 10)))
    for manifest in result.manifests:
        if manifest["stage"] == GATE_STAGE:
            print(outcome(manifest))
    for note in result.notes:
        print(note)


def _report_gate(ctx: StepContext, result: StepResult) -> None:
    from recpipe.stages.gate import outcome

    for manifest in result.manifests:
        print(outcome(manifest))


def _report_score(ctx: StepContext, result: StepResult) -> None:
    for note in result.notes:  # the gate's decision, when it chose the model
        print(note)
    for manifest in result.manifests:
        rows = [
            {"source": source, "users": manifest["users_by_source"][source], "rows": rows}
            for source, rows in manifest["source_counts"].items()
        ]
        print(
            format_table(
                rows,
                title=f"score {manifest['model']} (model ds "
                f"{manifest['model_ds']}, protocol {manifest['protocol']}, top-"
                f"{manifest['k']}, each user's history excluded) for ds {ctx.ds}",
            )
        )
        print(
            f"published {manifest['rows_out']:,} rows for {manifest['users_scored']:,} users "
            f"-> {manifest['location']}"
        )


def _report_publish(ctx: StepContext, result: StepResult) -> None:
    from recpipe.stages.gate import outcome

    for manifest in result.manifests:
        print(outcome(manifest["gate"]))
        counts = ", ".join(f"{k} {v:,}" for k, v in (manifest.get("source_counts") or {}).items())
        learned = (manifest.get("trained_on") or {}).get("rule")
        print(
            f"published {manifest['published_model']}"
            f"{f' (trained on {learned})' if learned else ''} as recommendations model="
            f"{manifest['partition']} ds={ctx.ds}: {manifest['rows_out']:,} rows ({counts}) -> "
            f"{manifest['location']}"
        )


Reporter = Callable[[StepContext, StepResult], None]

# What each pipeline step prints when run as a command (the demo prints its own summary).
REPORTERS: dict[str, Reporter] = {
    "train-baseline": _report_train_baseline,
    "train": _report_train,
    "evaluate": _report_evaluate,
    "gate": _report_gate,
    "score": _report_score,
    "publish": _report_publish,
}


def report(ctx: StepContext, name: str, result: StepResult) -> None:
    """Print step ``name``'s summary (the stage table for lake stages)."""
    REPORTERS.get(name, _report_stages)(ctx, result)


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
        "the users' known items excluded unless the manifest says otherwise; ci: the paired "
        "bootstrap interval over users, evaluation.bootstrap)"
    )
    print(format_table([_metric_line(row) for row in rows], title=title))
    return 0


def print_tuning(manifest: dict[str, Any]) -> None:
    """``recpipe tune``'s summary: a row per trial, then the best one and its overlay."""
    from recpipe.stages.tune import trial_rows

    rows = trial_rows(manifest["trials"], "valid", _short)
    title = f"tune {manifest['model']} (valid = {manifest['metric']}; {manifest['sampler']})"
    print(format_table(rows, title=title))
    best = manifest["best"]
    epoch = "" if best["best_epoch"] is None else f" at epoch {best['best_epoch']}"
    print(f"best: trial {best['number']}, valid {best['value']:.4f}{epoch}: {best['params']}")
    command = "train-baseline" if is_baseline(manifest["model"]) else "train"
    print(
        f"overlay: {manifest['overlay']}  (recpipe {command} --model {manifest['model']} "
        "--conf conf/base.yaml --conf conf/local.yaml --conf <overlay>)"
    )


def _short(value: Any) -> Any:
    """Floats to four significant digits, so a trial row stays one line."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _metric_line(row: dict[str, Any]) -> dict[str, Any]:
    """A ``model_metrics`` row as the text table shows it: the interval as one ``ci`` cell."""
    line = {key: value for key, value in row.items() if key not in ("ci_low", "ci_high")}
    low, high = row.get("ci_low"), row.get("ci_high")
    line["ci"] = "" if low is None or high is None else f"[{low:.4f}, {high:.4f}]"
    return line


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
