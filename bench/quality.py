"""Quality benchmark: every baseline and deep model on MovieLens 100K, one table, full ranking.

Runs fetch -> etl -> export -> baselines -> deep models (train.launcher from the config; early
stopping on the valid split where the protocol has one) -> evaluation, under ``leave_last_out``,
``random_by_user`` (67.5/7.5/25 by default) and ``cold_items`` (the 10 % of items first seen
last, all their interactions in test; ``cold_users`` likewise for users, on request), and
prints one table: a row per model,
NDCG@K with its 95 % paired-bootstrap interval, Recall@K and HR@K per protocol, with the
protocol spelled out in the title. Stages already done
for the same root and ds are reused with ``--reuse`` (models are always retrained).

With ``--tune N`` each model's settings are first searched per protocol with ``recpipe tune``
(N trials, scored on the protocol's valid split only; the test split is read by nothing but
the final evaluation) and the best overlay is kept under ``--tuned`` (default
``conf/tuned/movielens-100k/<protocol>/<model>.yaml``, committed with the repository, so
later runs reuse it instead of searching again). A model is then trained and evaluated once
per protocol with that protocol's overlay. Without ``--tune`` overlays already kept there are
still applied (``--no-tuned``: the defaults).

    .venv/bin/python bench/quality.py [--root var/quality] [--models sasrec gru4rec ...]
        [--baselines popularity als ...] [--protocols cold_items ...] [--k 10]
        [--set key=value]...

The catalogue's features (conf/features/movielens-100k.yaml) are built too, so the
feature-aware models (hybrid_two_tower) read them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from recpipe import storage
from recpipe.config import default_conf_files, load_config
from recpipe.console import format_table
from recpipe.registry import model_names
from recpipe.storage import LocationLike

DS = "2026-11-22"
PROTOCOLS = ("leave_last_out", "random_by_user", "cold_items")
SHORT = {
    "leave_last_out": "llo", "random_by_user": "rbu", "cold_items": "cold",
    "cold_users": "coldu", "temporal": "tmp",
}  # fmt: skip
FEATURES = Path(__file__).resolve().parent.parent / "conf" / "features" / "movielens-100k.yaml"
TUNED = Path(__file__).resolve().parent.parent / "conf" / "tuned" / "movielens-100k"
BASELINES = tuple(model_names("baseline"))  # every baseline, NMF and item2vec included
DEEP = tuple(model_names("deep"))


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="var/quality", help="paths.root of the run")
    parser.add_argument(
        "--models", nargs="*", default=list(DEEP), choices=DEEP, metavar="MODEL",
        help=f"deep models to train (default all: {', '.join(DEEP)})",
    )  # fmt: skip
    parser.add_argument(
        "--baselines", nargs="*", default=list(BASELINES), choices=BASELINES, metavar="BASELINE",
        help=f"baselines to train (default all: {', '.join(BASELINES)})",
    )  # fmt: skip
    parser.add_argument(
        "--protocols", nargs="*", default=list(PROTOCOLS), choices=tuple(SHORT),
        metavar="PROTOCOL", help=f"split protocols to measure (one of {', '.join(SHORT)})",
    )  # fmt: skip
    parser.add_argument("--k", type=int, default=10, help="cut-off of the table's metrics")
    parser.add_argument(
        "--reuse", action="store_true", help="skip fetch/etl/export when their manifests exist"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. --set train.max_epochs=5",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, help="also write the table rows here as JSON (after every model)"
    )
    parser.add_argument(
        "--tune", type=int, default=0, metavar="N",
        help="search each model's settings with N trials per protocol (valid split only) "
        "where --tuned holds no overlay yet",
    )  # fmt: skip
    parser.add_argument(
        "--tuned", type=Path, default=TUNED,
        help="folder of tuned overlays, <protocol>/<model>.yaml (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--no-tuned", action="store_true", help="ignore tuned overlays: every model at defaults"
    )
    return parser.parse_args()


def main() -> None:
    """Run the chain and print the table."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from recpipe.datasets.movielens import REFERENCE_KEYS, fetch_movielens_100k
    from recpipe.pipeline import StepContext, run_steps
    from recpipe.spark import get_spark
    from recpipe.stages.evaluate import run_evaluate
    from recpipe.stages.train import run_train
    from recpipe.stages.train_baseline import run_train_baseline

    base = [
        f"paths.root={args.root}",
        f"split.protocols=[{','.join(args.protocols)}]",
        "warehouse.database=quality_bench",
        # Quality is measured on the protocols' test splits; the serving refit on protocol
        # all would double the training time and is never scored here.
        "score.train_on=protocol",
    ]
    files = [*default_conf_files(), FEATURES]
    first = load_config(files, [*base, *args.overrides])
    fetched = fetch_movielens_100k(first.datasets.movielens, first.root, first.local_root)
    # The catalogue and profiles too: ILD@K by genre and quality by gender/age come with them.
    references = [f"paths.{key}={fetched[key]}" for key in REFERENCE_KEYS if key in fetched]
    overrides = [*base, f"paths.raw_events={fetched['raw_events']}", *references,
                 *args.overrides]  # fmt: skip
    config = load_config(files, overrides)
    stages = ["clean", "catalog", "vocab", "features", "sessionize", "split", "export"]
    if args.reuse:
        stages = stages_to_rerun(config.root, stages, args.protocols)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if stages:
        run_steps(StepContext(config, DS), stages)
    timings["etl+export"] = time.perf_counter() - started
    spark = get_spark(config)
    evaluations: list[Any] = []
    tuned: dict[str, dict[str, str]] = {}
    epochs: dict[str, dict[str, str]] = {}  # model -> protocol -> epochs run (and best)
    for name in [*args.baselines, *args.models]:
        started = time.perf_counter()
        for protocol in args.protocols:
            chosen = _settings(spark, (files, overrides), name, protocol, args, tuned)
            if name in args.baselines:
                run_train_baseline(spark, chosen, DS, name)
                _, found = run_evaluate(spark, chosen, DS, [name])
            else:
                _, found = run_train(spark, chosen, DS, [name])
                epochs.setdefault(name, {})[protocol] = _epochs(chosen.root, name, protocol)
            evaluations += found
        timings[name] = time.perf_counter() - started
        _save(args.json, evaluations, args.k, timings, epochs)  # a long run keeps its rows
    rows = table_rows(evaluations, args.k, timings, epochs)
    protocols = {e.result.protocol.split_protocol: e.result.protocol for e in evaluations}
    title = "; ".join(p.describe(args.k) for p in protocols.values())
    print(format_table(rows, title=f"MovieLens 100K quality ({title})"))
    for name, where in tuned.items():
        print(f"{name}: " + "; ".join(f"{p} {how}" for p, how in where.items()))
    _save(args.json, evaluations, args.k, timings, epochs)


# Where a stage's manifest lists what it wrote per split protocol.
PROTOCOL_KEYS = {"split": "protocols", "export": "samples"}


def stages_to_rerun(root: LocationLike, stages: list[str], protocols: list[str]) -> list[str]:
    """The stages ``--reuse`` runs again: from the first whose manifest is missing or lacks
    one of ``protocols`` (a root first built for fewer protocols), every later one too, since
    each reads what the one before wrote."""
    from recpipe.layout import manifest_path
    from recpipe.manifest import read_manifest

    for position, stage in enumerate(stages):
        if not storage.is_file(manifest_path(root, stage, DS)):
            return stages[position:]
        key = PROTOCOL_KEYS.get(stage)
        if key and not set(protocols) <= set(read_manifest(root, stage, DS).get(key, {})):
            return stages[position:]
    return []


def _settings(
    spark: Any, loaded: tuple[list[Path], list[str]], name: str, protocol: str,
    args: argparse.Namespace, tuned: dict[str, dict[str, str]],
) -> Any:  # fmt: skip
    """The config ``name`` trains with on ``protocol`` alone: its kept overlay (searched now
    with ``--tune`` when none is kept), else its defaults. ``loaded``: the run's config files
    and overrides."""
    from recpipe.stages.tune import declared_space, run_tune, tuning_dir

    files, overrides = loaded
    overrides = [*overrides, f"split.protocols=[{protocol}]"]
    single = load_config(files, overrides)
    kept = args.tuned / protocol / f"{name}.yaml"
    how = "defaults"
    searchable = args.tune > 0 and bool(declared_space(single, name))
    if not args.no_tuned and not kept.exists() and searchable:
        run_tune(single, DS, name, trials=args.tune, protocol=protocol, spark=spark)
        kept.parent.mkdir(parents=True, exist_ok=True)
        best = tuning_dir(single.root, name, DS, protocol) / "best.yaml"
        kept.write_text(storage.read_text(best))
        how = f"tuned now ({args.tune} trials)"
    elif not args.no_tuned and kept.exists():
        how = f"tuned ({kept.name} kept)"
    tuned.setdefault(name, {})[protocol] = how
    if how == "defaults":
        return single
    return load_config([*files, kept], overrides)


def _epochs(root: LocationLike, name: str, protocol: str) -> str:
    """Epochs run (and the best one) of ``name``'s training on ``protocol``, from its manifest."""
    from recpipe.manifest import read_manifest

    info = read_manifest(root, f"train-{name}", DS)["protocols"][protocol]
    best = f"/best {info['best_epoch']}" if "best_epoch" in info else ""
    return f"{info['epochs_run']}{best}"


def _save(
    path: Path | None,
    evaluations: list[Any],
    k: int,
    timings: dict[str, float],
    epochs: dict[str, dict[str, str]],
) -> None:
    """With ``--json``, write the rows measured so far (after every model)."""
    if path is not None:
        path.write_text(json.dumps(table_rows(evaluations, k, timings, epochs), indent=2))


def table_rows(
    evaluations: list[Any], k: int, timings: dict[str, float], epochs: dict[str, dict[str, str]]
) -> list[dict[str, Any]]:
    """A row per model: metrics per protocol, training seconds, early-stopping epochs."""
    rows: dict[str, dict[str, Any]] = {}
    for evaluation in evaluations:
        result = evaluation.result
        row = rows.setdefault(result.model, {"model": result.model})
        short = SHORT.get(result.protocol.split_protocol, result.protocol.split_protocol)
        texts = result.metric_texts()
        row[f"{short} ndcg@{k}"] = texts[f"ndcg@{k}"]
        for metric in ("recall", "hr", "ild"):
            if (metric, k) in result.values:
                row[f"{short} {metric}@{k}"] = round(result.values[(metric, k)], 4)
    for name, row in rows.items():
        row["train s (all)"] = round(timings.get(name, float("nan")), 1)
        if name in epochs:
            runs = epochs[name]
            row["epochs (" + "; ".join(SHORT.get(p, p) for p in runs) + ")"] = "; ".join(
                runs.values()
            )
    return list(rows.values())


if __name__ == "__main__":
    main()
