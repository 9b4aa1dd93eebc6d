"""Quality benchmark: every baseline and deep model on MovieLens 100K, one table, full ranking.

Runs fetch -> etl -> export -> baselines -> deep models (train.launcher from the config; early
stopping on the valid split where the protocol has one) -> evaluation, under ``leave_last_out``,
``random_by_user`` (67.5/7.5/25 by default) and ``cold_items`` (the 10 % of items first seen
last, all their interactions in test; ``cold_users`` likewise for users, on request), and
prints one table: a row per model,
NDCG@K with its 95 % paired-bootstrap interval, Recall@K and HR@K per protocol, with the
protocol spelled out in the title. Stages already done
for the same root and ds are reused with ``--reuse`` (models are always retrained).

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
    return parser.parse_args()


def main() -> None:
    """Run the chain and print the table."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from recpipe.datasets.movielens import REFERENCE_KEYS, fetch_movielens_100k
    from recpipe.layout import manifest_path
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
    config = load_config(files, [*base, f"paths.raw_events={fetched['raw_events']}",
                                *references, *args.overrides])  # fmt: skip
    stages = ["clean", "catalog", "vocab", "features", "sessionize", "split", "export"]
    if args.reuse:
        stages = [s for s in stages if not storage.is_file(manifest_path(config.root, s, DS))]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if stages:
        run_steps(StepContext(config, DS), stages)
    timings["etl+export"] = time.perf_counter() - started
    spark = get_spark(config)
    for name in args.baselines:
        started = time.perf_counter()
        run_train_baseline(spark, config, DS, name)
        timings[name] = time.perf_counter() - started
    _, evaluations = run_evaluate(spark, config, DS, list(args.baselines))
    _save(args.json, evaluations, args.k, timings, config.root)
    for name in args.models:
        started = time.perf_counter()
        _, deep = run_train(spark, config, DS, [name])
        timings[name] = time.perf_counter() - started
        evaluations += deep
        _save(args.json, evaluations, args.k, timings, config.root)  # a long run keeps its rows
    rows = table_rows(evaluations, args.k, timings, config.root)
    protocols = {e.result.protocol.split_protocol: e.result.protocol for e in evaluations}
    title = "; ".join(p.describe(args.k) for p in protocols.values())
    print(format_table(rows, title=f"MovieLens 100K quality ({title})"))
    _save(args.json, evaluations, args.k, timings, config.root)


def _save(
    path: Path | None, evaluations: list[Any], k: int, timings: dict[str, float], root: LocationLike
) -> None:
    """With ``--json``, write the rows measured so far (after every model)."""
    if path is not None:
        path.write_text(json.dumps(table_rows(evaluations, k, timings, root), indent=2))


def table_rows(
    evaluations: list[Any], k: int, timings: dict[str, float], root: LocationLike
) -> list[dict[str, Any]]:
    """A row per model: metrics per protocol, training seconds, early-stopping epoch."""
    from recpipe.manifest import read_manifest

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
        if name in DEEP:
            manifest = read_manifest(root, f"train-{name}", DS)
            epochs = [
                f"{info['epochs_run']}"
                + (f"/best {info['best_epoch']}" if "best_epoch" in info else "")
                for info in manifest["protocols"].values()
            ]
            row["epochs (" + "; ".join(SHORT.get(p, p) for p in manifest["protocols"]) + ")"] = (
                "; ".join(epochs)
            )
    return list(rows.values())


if __name__ == "__main__":
    main()
