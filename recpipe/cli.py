"""``recpipe <command> [--conf FILE]... [--ds YYYY-MM-DD] [--set key=value]...``"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, get_args

from recpipe import __version__
from recpipe.config import Config, ConfigError, SplitProtocol, load_config
from recpipe.console import format_table
from recpipe.errors import RecpipeError, is_spark_failure, spark_failure_line
from recpipe.layout import raw_dir
from recpipe.pipeline import ETL_STEPS, PIPELINE, Step, StepContext
from recpipe.registry import model_names

log = logging.getLogger("recpipe")


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


def add_common_options(parser: argparse.ArgumentParser, ds: str = "required") -> None:
    """The options every command and every job in ``jobs/`` accepts.

    ``ds``: "required" for commands that write a day (a job never silently processes the
    wall-clock date), "newest" for readers that default to the newest published day, "today"
    for the demo (a laptop run of its own copy of MovieLens: today's UTC date), "none" for
    commands without a logical date.
    """
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
    if ds == "required":
        parser.add_argument(
            "--ds",
            type=_valid_ds,
            required=True,
            metavar="YYYY-MM-DD",
            help="logical date of the run: the partition read and written (required)",
        )
    elif ds == "today":
        parser.add_argument(
            "--ds",
            type=_valid_ds,
            default=dt.datetime.now(dt.UTC).date().isoformat(),
            metavar="YYYY-MM-DD",
            help="logical date of the run (default: today, UTC)",
        )
    elif ds == "newest":
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


def _clean_options(parser: argparse.ArgumentParser) -> None:
    add_allow_empty(parser)


def _train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each run from its last checkpoint (checkpoints/last.pt) instead of "
        "starting over",
    )
    parser.add_argument(
        "--no-evaluate", action="store_true", help="skip the evaluation after training"
    )
    parser.add_argument("--k", type=int, default=10, help="K of the printed metric tables")


def _evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=10, help="K of the printed tables")
    parser.add_argument(
        "--no-gate",
        action="store_true",
        help="do not run the selection gate (gate.*) after evaluating",
    )


def add_model_option(parser: argparse.ArgumentParser, step: Step) -> None:
    """``--model`` (repeatable) for a step that works on models; baselines are a closed set."""
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        choices=model_names("baseline") if step.models == "baseline" else None,
        help=step.model_help,
    )


# Options beyond the common ones, per pipeline step.
STEP_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "clean": _clean_options,
    "train": _train_options,
    "evaluate": _evaluate_options,
}


def build_parser() -> argparse.ArgumentParser:
    """The full ``recpipe`` command-line parser."""
    parser = argparse.ArgumentParser(
        prog="recpipe",
        description="Batch recommender pipeline on Spark. Every command reads the layered "
        "config (--conf, --set), works on one logical date (--ds) and writes a manifest to "
        "<paths.root>/manifests/<command>/ds=<ds>.json. Pipeline steps, in order: "
        + " -> ".join(step.name for step in PIPELINE)
        + ".",
    )
    parser.add_argument("--version", action="version", version=f"recpipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    fetch = commands.add_parser(
        "fetch-data",
        help="download a public data set and write it as raw event logs",
        description="Fetch a data set into <paths.root>/raw/<name>/ as JSON-lines raw events.",
    )
    fetch.add_argument("dataset", choices=["movielens-100k"], help="data set to fetch")
    add_common_options(fetch, ds="none")

    generate = commands.add_parser(
        "generate",
        help="write synthetic raw logs (Zipf items, sessions, malformed rows)",
        description="Generate deterministic synthetic raw event logs as JSON lines; settings "
        "not given here come from datasets.synthetic.*",
    )
    generate.add_argument("--events", type=int, required=True, help="number of valid events")
    generate.add_argument(
        "--out",
        help="output folder: a path or a URI such as s3a://bucket/raw "
        "(default: <paths.root>/raw/synthetic)",
    )
    add_common_options(generate, ds="none")

    for step in PIPELINE:
        sub = commands.add_parser(
            step.name, help=step.help, description=step.description or step.help
        )
        STEP_OPTIONS.get(step.name, lambda _: None)(sub)
        if step.models:
            add_model_option(sub, step)
        add_common_options(sub)
    etl = commands.add_parser("etl", help=f"{', '.join(ETL_STEPS)} in one Spark session")
    add_common_options(etl)
    add_allow_empty(etl)
    als = commands.add_parser(
        "train-als",
        help="train Spark MLlib implicit ALS (baselines.als.*): train-baseline --model als",
    )
    add_common_options(als)
    add_query_commands(commands)
    add_tune_command(commands)
    demo = commands.add_parser(
        "demo",
        help="run the whole chain on MovieLens 100K and print a summary",
        description="fetch-data movielens-100k, then every pipeline step ("
        + " -> ".join(step.name for step in PIPELINE)
        + ") under leave_last_out and random_by_user on the embedded local set-up, a summary "
        "table and an HTML report.",
    )
    add_common_options(demo, ds="today")
    return parser


def add_tune_command(commands: Any) -> None:
    """Parser of ``recpipe tune``."""
    tune = commands.add_parser(
        "tune",
        help="search a model's settings on the valid split (Optuna TPE)",
        description="Run --trials trainings of one model on the train split of ds (deep "
        "models: the exported samples, so `recpipe export` first; baselines: fitted like "
        "train-baseline, nothing written), each with settings drawn from the search space "
        "declared next to the model's settings (recpipe/model_settings.py, "
        "recpipe/config.py), scored by train.early_stopping.metric@k on the protocol's "
        "valid split; the test split is never read. Prints every trial and writes the best "
        "settings as a config overlay for `recpipe train --conf` / `train-baseline --conf`. "
        "Needs the optional extra recpipe[tune] (Optuna).",
    )
    tune.add_argument(
        "--model", required=True, choices=model_names(), help="deep model or baseline"
    )
    tune.add_argument("--trials", type=int, help="trials to run (default: tune.trials, 20)")
    tune.add_argument(
        "--protocol",
        choices=get_args(SplitProtocol),
        help="split protocol whose valid split scores the trials (default: tune.protocol, "
        "else score.protocol)",
    )
    add_common_options(tune)


def add_query_commands(commands: Any) -> None:
    """Parsers of the commands that read published state (and of sweep)."""
    sweep = commands.add_parser(
        "sweep",
        help="remove lake versions and scratch that killed or failed runs left behind",
        description="Under each (stage, ds) lock: delete lake version folders no manifest "
        "references (the current and the previous version stay), scratch folders, and the "
        "_staging/_trash folders of earlier releases. Runs in progress are skipped and listed. "
        "Every stage run already sweeps its own (stage, ds); use this for days never re-run.",
    )
    add_common_options(sweep, ds="newest")
    metrics = commands.add_parser("metrics", help="print the model_metrics table")
    metrics.add_argument("--model", help="only this model")
    metrics.add_argument("--format", choices=["table", "json"], default="table", help="output")
    add_common_options(metrics, ds="newest")
    recs = commands.add_parser(
        "recs",
        help="one user's recommendations, read from Parquet without a JVM",
    )
    recs.add_argument("--user", required=True, help="original user id")
    recs.add_argument("--model", help="model (default: the only one published for that ds)")
    recs.add_argument("--k", type=int, help="at most this many items (default: all published)")
    recs.add_argument("--format", choices=["table", "json"], default="table", help="output")
    add_common_options(recs, ds="newest")
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
    add_common_options(sql, ds="newest")


def setup_logging(verbose: bool) -> None:
    """Per-stage progress logs on stderr."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)


def _config(args: argparse.Namespace) -> Config:
    overrides = [*args.overrides]
    if getattr(args, "allow_empty", False):
        overrides.append("clean.allow_empty=true")
    return load_config(args.conf, overrides)


def _step_context(args: argparse.Namespace, config: Config) -> StepContext:
    models = ["als"] if args.command == "train-als" else getattr(args, "model", None)
    options = {
        "resume": getattr(args, "resume", False),
        "evaluate": not getattr(args, "no_evaluate", False),
        "gate": not getattr(args, "no_gate", False),
        "k": getattr(args, "k", None) or 10,
    }
    return StepContext(config, args.ds, models, options)


def _run_pipeline_steps(args: argparse.Namespace) -> int:
    from recpipe.commands import report
    from recpipe.pipeline import run_steps

    ctx = _step_context(args, _config(args))
    if args.command == "etl":
        report(ctx, "etl", run_steps(ctx, ETL_STEPS))
    else:
        name = "train-baseline" if args.command == "train-als" else args.command
        report(ctx, name, run_steps(ctx, [name]))
    return 0


def _fetch_data(args: argparse.Namespace) -> int:
    from recpipe.datasets.movielens import REFERENCE_KEYS, fetch_movielens_100k

    config = _config(args)
    if args.dataset != "movielens-100k":
        raise ConfigError(f"unknown dataset {args.dataset!r}")
    summary = fetch_movielens_100k(config.datasets.movielens, config.root, config.local_root)
    print(json.dumps(summary, indent=2))
    print(f"next: recpipe clean --ds YYYY-MM-DD --set paths.raw_events={summary['raw_events']}")
    references = [f"paths.{key}={summary[key]}" for key in REFERENCE_KEYS if key in summary]
    if references:
        sets = " ".join(f"--set {ref}" for ref in references)
        print(f"      recpipe catalog --ds YYYY-MM-DD {sets}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from recpipe.datasets.synthetic import SyntheticSpec, generate_events

    config = _config(args)
    settings = config.datasets.synthetic
    spec = SyntheticSpec(
        n_events=args.events,
        n_users=settings.n_users,
        n_items=settings.n_items,
        start=settings.start.isoformat(),
        days=settings.days,
        malformed_fraction=settings.malformed_fraction,
        duplicate_fraction=settings.duplicate_fraction,
        n_files=settings.n_files,
        seed=settings.seed,
        catalog=settings.catalog,
        late_item_fraction=settings.late_item_fraction,
        device_category_share=settings.device_category_share,
    )
    summary = generate_events(spec, args.out or raw_dir(config.root, "synthetic"), progress=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "files"}, indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from recpipe.demo import run_demo

    run_demo(args.conf, args.overrides, args.ds)
    return 0


def _query(args: argparse.Namespace) -> int:
    from recpipe import commands

    handler = {"metrics": commands.print_metrics, "recs": commands.print_recs}
    return handler.get(args.command, commands.print_sql)(_config(args), args)


def _tune(args: argparse.Namespace) -> int:
    from recpipe.baselines import baseline_class
    from recpipe.commands import print_tuning
    from recpipe.registry import is_baseline
    from recpipe.stages.tune import run_tune

    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {args.trials}")
    config = _config(args)
    spark = None
    if is_baseline(args.model) and baseline_class(args.model).fits_in_spark:
        from recpipe.spark import get_spark

        spark = get_spark(config)
    print_tuning(run_tune(config, args.ds, args.model, args.trials, args.protocol, spark))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from recpipe.sweep import sweep_root

    rows = sweep_root(_config(args).root, args.ds)
    print(format_table(rows, title="sweep") if rows else "sweep: nothing to remove")
    return 0


def command_handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    """Command name -> handler; every command is dispatched through this one table."""
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        step.name: _run_pipeline_steps for step in PIPELINE
    }
    handlers.update(
        {
            "etl": _run_pipeline_steps,
            "train-als": _run_pipeline_steps,
            "fetch-data": _fetch_data,
            "generate": _generate,
            "demo": _demo,
            "metrics": _query,
            "recs": _query,
            "sql": _query,
            "sweep": _sweep,
            "tune": _tune,
        }
    )
    return handlers


# pyarrow.fs states a local failure as "Cannot create directory '/x'. Detail: [errno 20] Not a
# directory" (no filename attribute): read the path and the system's reason back out of it.
_ARROW_OS_ERROR = re.compile(r"'(?P<path>[^']+)'.*Detail: \[errno \d+\] (?P<reason>[^\n]+)")


def os_error_line(exc: OSError) -> str:
    """``reason: path`` of a failed file operation, as Python and pyarrow.fs raise them."""
    if exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    text = str(exc.strerror or exc).strip()
    match = _ARROW_OS_ERROR.search(text)
    if match:
        return f"{match['reason'].strip()}: {match['path']}"
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recpipe`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return command_handlers()[args.command](args)
    except ConfigError as exc:
        print(f"recpipe: config error: {exc}", file=sys.stderr)
        return 2
    except RecpipeError as exc:
        print(f"recpipe {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an unwritable root, a full disk: the environment, stated in one line
        print(f"recpipe {args.command}: {os_error_line(exc)}", file=sys.stderr)
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
    if stage not in command_handlers():
        raise ValueError(f"unknown stage {stage!r}")
    return main([stage, *argv])
