"""``recpipe <command> [--conf FILE]... [--ds YYYY-MM-DD] [--set key=value]...``"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recpipe import __version__
from recpipe.config import Config, ConfigError, load_config
from recpipe.console import format_table
from recpipe.errors import RecpipeError, is_spark_failure, spark_failure_line
from recpipe.layout import raw_dir

log = logging.getLogger("recpipe")

StageFn = Callable[[Any, Config, str], dict[str, Any]]


# Stages compute windows a few days around ds (ts_max_days_after_ds, history): keep them inside
# what datetime can represent instead of failing with an OverflowError deep in a stage.
_DS_RANGE = (dt.date(1970, 1, 1), dt.date(9000, 12, 31))


def _valid_ds(text: str) -> str:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ds expects YYYY-MM-DD, got {text!r}") from None
    low, high = _DS_RANGE
    if not low <= day <= high:
        raise argparse.ArgumentTypeError(f"--ds must lie between {low} and {high}, got {text!r}")
    return day.isoformat()


def add_common_options(parser: argparse.ArgumentParser, ds_required_default: bool = True) -> None:
    """The options every command and every job in ``jobs/`` accepts."""
    parser.add_argument(
        "--conf",
        action="append",
        metavar="FILE",
        help="YAML config file; repeat to layer files, later ones win "
        "(default: conf/base.yaml + conf/local.yaml, the embedded local set-up)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set paths.root=/data/recpipe "
        "--set split.protocols=[leave_last_out,random_by_user]; values are YAML",
    )
    if ds_required_default:
        parser.add_argument(
            "--ds",
            type=_valid_ds,
            default=dt.datetime.now(dt.UTC).date().isoformat(),
            metavar="YYYY-MM-DD",
            help="logical date of the run: the partition read and written (default: today, UTC)",
        )
    else:
        parser.add_argument(
            "--ds",
            type=_valid_ds,
            default=None,
            metavar="YYYY-MM-DD",
            help="partition to read (default: the newest published)",
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_allow_empty(parser: argparse.ArgumentParser) -> None:
    """``--allow-empty``: the explicit consent to replace a non-empty day with an empty one."""
    parser.add_argument(
        "--allow-empty",
        action="store_true",
        help="let an input with no valid event replace a non-empty events partition of --ds "
        "(same as --set clean.allow_empty=true); without it such a run fails and keeps the day",
    )


STAGE_HELP = {
    "clean": "raw logs -> lake tables events + quarantine (bad rows with a reason code)",
    "vocab": "extend the persistent user/item integer indexes with new ids",
    "sessionize": "events -> sessions (explicit session_id or an inactivity gap)",
    "split": "sessions -> train/valid/test under each protocol in split.protocols",
    "export": "train splits -> Parquet training samples (pairwise, pointwise, sequence) for "
    "the deep models, train.processes x export.files_per_process files per table",
}


ETL_STAGES: tuple[str, ...] = ("clean", "vocab", "sessionize", "split")


def build_parser() -> argparse.ArgumentParser:
    """The full ``recpipe`` command-line parser."""
    parser = argparse.ArgumentParser(
        prog="recpipe",
        description="Batch recommender pipeline on Spark. Every command reads the layered "
        "config (--conf, --set), works on one logical date (--ds) and writes a manifest to "
        "<paths.root>/manifests/<command>/ds=<ds>.json.",
    )
    parser.add_argument("--version", action="version", version=f"recpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    fetch = commands.add_parser(
        "fetch-data",
        help="download a public data set and write it as raw event logs",
        description="Fetch a data set into <paths.root>/raw/<name>/ as JSON-lines raw events.",
    )
    fetch.add_argument("dataset", choices=["movielens-100k"], help="data set to fetch")
    add_common_options(fetch)

    generate = commands.add_parser(
        "generate",
        help="write synthetic raw logs (Zipf items, sessions, malformed rows)",
        description="Generate deterministic synthetic raw event logs as JSON lines; settings "
        "not given here come from datasets.synthetic.*",
    )
    generate.add_argument("--events", type=int, required=True, help="number of valid events")
    generate.add_argument(
        "--out", type=Path, help="output folder (default: <paths.root>/raw/synthetic)"
    )
    add_common_options(generate)

    for name, text in STAGE_HELP.items():
        stage = commands.add_parser(name, help=text, description=text)
        add_common_options(stage)
        if name == "clean":
            add_allow_empty(stage)
    etl = commands.add_parser("etl", help="clean, vocab, sessionize and split in one Spark session")
    add_common_options(etl)
    add_allow_empty(etl)
    add_model_commands(commands)
    sweep = commands.add_parser(
        "sweep",
        help="remove lake versions and scratch that killed or failed runs left behind",
        description="Under each (stage, ds) lock: delete lake version folders no manifest "
        "references (the current and the previous version stay), scratch folders, and the "
        "_staging/_trash folders of earlier releases. Runs in progress are skipped and listed. "
        "Every stage run already sweeps its own (stage, ds); use this for days never re-run.",
    )
    add_common_options(sweep, ds_required_default=False)
    demo = commands.add_parser(
        "demo",
        help="run the whole chain on MovieLens 100K and print a summary",
        description="fetch-data movielens-100k -> clean -> vocab -> sessionize -> split "
        "(leave_last_out and random_by_user) on the embedded local set-up.",
    )
    add_common_options(demo)
    return parser


def add_model_commands(commands: Any) -> None:
    """Parsers of the train, evaluate, score and query commands."""
    from recpipe.baselines import REGISTRY

    models = sorted(REGISTRY)
    train = commands.add_parser(
        "train-baseline",
        help="train a baseline on the train split of each protocol in split.protocols",
        description="Train popularity, item-kNN (Spark), implicit ALS (Spark MLlib) or EASE; "
        "models go to <paths.root>/models/<model>/<ds>/<protocol>/.",
    )
    train.add_argument(
        "--model",
        action="append",
        choices=models,
        help="baseline to train; repeat for several (default: baselines.models)",
    )
    add_common_options(train)
    als = commands.add_parser("train-als", help="train Spark MLlib implicit ALS (baselines.als.*)")
    add_common_options(als)
    deep = commands.add_parser(
        "train",
        help="train deep models (PyTorch) on the exported samples, then evaluate them",
        description="Train each model in train.models (or --model) on the export stage's "
        "samples of every protocol in split.protocols, with train.launcher (local | torchrun | "
        "spark | horovod, the last in the Horovod environment: train.horovod_env, make "
        "legacy-venv) reading through train.loader (arrow | petastorm) and early stopping on "
        "the valid split; the model goes to "
        "<paths.root>/models/<model>/<ds>/<protocol>/model.pt and is then evaluated like the "
        "baselines. Model settings: conf/models/<model>.yaml (keys models.<model>.*).",
    )
    deep.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="deep model to train (bpr_mf, neumf, two_tower, gru4rec, sasrec); repeat for "
        "several (default: train.models)",
    )
    deep.add_argument(
        "--resume",
        action="store_true",
        help="continue each run from its last checkpoint (checkpoints/last.pt) instead of "
        "starting over",
    )
    deep.add_argument(
        "--no-evaluate", action="store_true", help="skip the evaluation after training"
    )
    deep.add_argument("--k", type=int, default=10, help="K of the printed metric tables")
    add_common_options(deep)
    evaluate = commands.add_parser(
        "evaluate",
        help="full-ranking metrics of trained models on evaluation.split",
        description="Evaluate trained models under every protocol in split.protocols; metrics "
        "go to the manifest and to table <warehouse.database>.model_metrics.",
    )
    evaluate.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help=f"model to evaluate: a baseline ({', '.join(models)}) or a trained deep model; "
        "repeat for several (default: every model trained for --ds)",
    )
    evaluate.add_argument("--k", type=int, default=10, help="K of the printed tables")
    add_common_options(evaluate)
    evaluate.add_argument(
        "--no-gate",
        action="store_true",
        help="do not run the selection gate (gate.*) after evaluating",
    )
    score = commands.add_parser(
        "score",
        help="top-K per user scored on the Spark executors, published to the recommendations "
        "table",
        description="Score every user of the sessions partition of --ds with one trained model "
        "(trained for score.model_ds, default --ds, on score.protocol's train split): blocked "
        "matrix products and top-K in torch on each partition (score.partitions, "
        "score.user_block, score.item_block, score.device), each user's history excluded. Users "
        "the model cannot score get the popularity list of the last score.popular_window_days "
        "days (source 'popular'). Published to recommendations partition (ds, model).",
    )
    score.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="trained model (baseline or deep) to score; repeat for several (default: the "
        "gate's choice for --ds, from model_metrics)",
    )
    add_common_options(score)
    gate = commands.add_parser(
        "gate",
        help="compare the candidate model with the baseline (gate.*) and record the decision",
        description="Read gate.metric@gate.k of gate.candidate (default: the best evaluated deep "
        "model) and gate.baseline from model_metrics (score.protocol, evaluation.split); the "
        "candidate passes when it is at least the baseline minus gate.tolerance. Writes "
        "manifest 'gate'. A failing gate exits 0.",
    )
    add_common_options(gate)
    publish = commands.add_parser(
        "publish",
        help="publish the gate's choice as the served recommendations (model=publish.name)",
        description="Decide with the gate, then copy the chosen model's scored partition (scored "
        "first if missing) into recommendations partition (ds, publish.name); the decision and "
        "its reason go to the manifest and to model_metrics (ds, publish.name). A failing gate "
        "publishes the baseline and exits 0.",
    )
    add_common_options(publish)
    metrics = commands.add_parser("metrics", help="print the model_metrics table")
    metrics.add_argument("--model", help="only this model")
    metrics.add_argument("--format", choices=["table", "json"], default="table", help="output")
    add_common_options(metrics, ds_required_default=False)
    recs = commands.add_parser(
        "recs",
        help="one user's recommendations, read from Parquet without a JVM",
    )
    recs.add_argument("--user", required=True, help="original user id")
    recs.add_argument("--model", help="model (default: the only one published for that ds)")
    recs.add_argument("--k", type=int, help="at most this many items (default: all published)")
    recs.add_argument("--format", choices=["table", "json"], default="table", help="output")
    add_common_options(recs, ds_required_default=False)
    sql = commands.add_parser(
        "sql",
        help="run read-only Spark SQL against the configured catalog",
        description="Queries (SELECT, WITH, VALUES, TABLE), SHOW, DESCRIBE and EXPLAIN only. "
        "Writes, DDL, SET, ADD JAR, functions, TRANSFORM ... USING, reflect/java_method and "
        "reads by path (format.`/path`) are refused before Spark runs any of them.",
    )
    sql.add_argument("query", help='e.g. "SELECT * FROM recpipe.model_metrics LIMIT 5"')
    sql.add_argument(
        "--admin",
        action="store_true",
        help="maintenance: run the statement unchecked (DDL, ALTER, DROP, INSERT); it can "
        "change or delete published data and run code, so keep it to operators",
    )
    sql.add_argument("--format", choices=["table", "json"], default="table", help="output")
    add_common_options(sql, ds_required_default=False)


def setup_logging(verbose: bool) -> None:
    """Per-stage progress logs on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def stage_functions() -> dict[str, StageFn]:
    """Stage name -> ``run_<stage>(spark, config, ds)`` (imported lazily: they pull in Spark)."""
    from recpipe.stages.clean import run_clean
    from recpipe.stages.export import run_export
    from recpipe.stages.sessionize import run_sessionize
    from recpipe.stages.split import run_split
    from recpipe.stages.vocab import run_vocab

    return {
        "clean": run_clean,
        "vocab": run_vocab,
        "sessionize": run_sessionize,
        "split": run_split,
        "export": run_export,
    }


def stage_summary_rows(manifests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per stage manifest: rows in/out, users, items, sessions, seconds."""
    rows = []
    for m in manifests:
        rows.append(
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
        )
    return rows


def split_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per protocol and part of a split manifest."""
    rows = []
    for protocol, info in manifest.get("protocols", {}).items():
        for part in ("train", "valid", "test"):
            rows.append(
                {"protocol": protocol, "part": part, **info[part]}  # rows, users
            )
    return rows


def print_stage_report(manifests: Sequence[dict[str, Any]]) -> None:
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


def run_stages(config: Config, ds: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """Run the named stages in order in one Spark session; returns their manifests."""
    from recpipe.spark import get_spark

    spark = get_spark(config)
    functions = stage_functions()
    return [functions[name](spark, config, ds) for name in names]


def _fetch(config: Config, dataset: str) -> dict[str, Any]:
    from recpipe.datasets.movielens import fetch_movielens_100k

    if dataset != "movielens-100k":
        raise ConfigError(f"unknown dataset {dataset!r}")
    return fetch_movielens_100k(config.datasets.movielens, config.root)


def _generate(config: Config, events: int, out: Path | None) -> dict[str, Any]:
    from recpipe.datasets.synthetic import SyntheticSpec, generate_events

    settings = config.datasets.synthetic
    spec = SyntheticSpec(
        n_events=events,
        n_users=settings.n_users,
        n_items=settings.n_items,
        start=settings.start.isoformat(),
        days=settings.days,
        malformed_fraction=settings.malformed_fraction,
        duplicate_fraction=settings.duplicate_fraction,
        n_files=settings.n_files,
        seed=settings.seed,
    )
    target = out or raw_dir(config.root, "synthetic")
    return generate_events(spec, target, progress=True)


def _demo(args: argparse.Namespace) -> int:
    from recpipe.demo import run_demo

    run_demo(args.conf, args.overrides, args.ds)
    return 0


def _train(config: Config, args: argparse.Namespace) -> int:
    from recpipe import commands

    models = ["als"] if args.command == "train-als" else args.model or config.baselines.models
    for model in models:
        commands.train(config, args.ds, model)
    return 0


def _train_deep(config: Config, args: argparse.Namespace) -> int:
    from recpipe import commands

    commands.train_deep(config, args.ds, args.model, args.resume, not args.no_evaluate, args.k)
    return 0


def _evaluate(config: Config, args: argparse.Namespace) -> int:
    from recpipe import commands

    commands.evaluate(config, args.ds, args.model, args.k, gate=not args.no_gate)
    return 0


def _gate(config: Config, args: argparse.Namespace) -> int:
    from recpipe import commands

    commands.gate(config, args.ds)
    return 0


def _publish(config: Config, args: argparse.Namespace) -> int:
    from recpipe import commands

    commands.publish(config, args.ds)
    return 0


def _score(config: Config, args: argparse.Namespace) -> int:
    from recpipe import commands

    for model in args.model or [commands.gate_choice(config, args.ds)]:
        commands.score(config, args.ds, model)
    return 0


def _query(config: Config, args: argparse.Namespace) -> int:
    from recpipe import commands

    handler = {"metrics": commands.print_metrics, "recs": commands.print_recs}
    return handler.get(args.command, commands.print_sql)(config, args)


def _sweep(config: Config, args: argparse.Namespace) -> int:
    from recpipe.sweep import sweep_root

    rows = sweep_root(config.root, args.ds)
    print(format_table(rows, title="sweep") if rows else "sweep: nothing to remove")
    return 0


MODEL_COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "train-baseline": _train,
    "train-als": _train,
    "train": _train_deep,
    "evaluate": _evaluate,
    "score": _score,
    "gate": _gate,
    "publish": _publish,
    "metrics": _query,
    "recs": _query,
    "sql": _query,
    "sweep": _sweep,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recpipe`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command == "demo":
            return _demo(args)
        overrides = [*args.overrides]
        if getattr(args, "allow_empty", False):
            overrides.append("clean.allow_empty=true")
        config = load_config(args.conf, overrides)
        if args.command == "fetch-data":
            summary = _fetch(config, args.dataset)
            print(json.dumps(summary, indent=2))
            print(f"next: recpipe clean --set paths.raw_events={summary['raw_events']}")
            return 0
        if args.command == "generate":
            summary = _generate(config, args.events, args.out)
            print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
            return 0
        if args.command in MODEL_COMMANDS:
            return MODEL_COMMANDS[args.command](config, args)
        names = list(ETL_STAGES) if args.command == "etl" else [args.command]
        print_stage_report(run_stages(config, args.ds, names))
        return 0
    except ConfigError as exc:
        print(f"recpipe: config error: {exc}", file=sys.stderr)
        return 2
    except RecpipeError as exc:
        print(f"recpipe {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an unwritable root, a full disk: the environment, stated in one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"recpipe {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not is_spark_failure(exc) or args.verbose:
            raise
        # A failed Spark job: the Java trace is in Spark's log above; the stage's record is
        # under manifests/<stage>/attempts/. -v shows the Python traceback too.
        print(f"recpipe {args.command}: {spark_failure_line(exc)}", file=sys.stderr)
        return 1


def run_job(stage: str, argv: Sequence[str]) -> int:
    """Body of a ``jobs/<stage>.py`` spark-submit script: the CLI restricted to one stage."""
    if stage not in STAGE_HELP and stage not in MODEL_COMMANDS:
        raise ValueError(f"unknown stage {stage!r}")
    return main([stage, *argv])
