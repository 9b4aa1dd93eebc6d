"""Context benchmark: what the event context (device, hour) adds to a factorisation model.

Synthetic logs (``--events``; the generator plants a device effect: ``device_category_share``
of a device's sessions browse that device's own category) go through the chain twice, once
without and once with ``features.context`` (device, hour of day). Each chain trains the same
model (``--model``, default DeepFM) with the same settings and epochs, plus the popularity
list (the named reference of the ratios). Printed: a row per (protocol, run) with NDCG@10 and
its 95 % paired-bootstrap interval, Recall@10, training seconds, and the ratio of NDCG@10 to
popularity's, then the with/without ratio per protocol. A model scores a user with their last
train event's context (the serving rule), so on ``leave_last_out`` that is the context of the
event just before the held-out one.

    .venv/bin/python bench/context.py [--events 300000] [--model deepfm] [--epochs 5]
        [--root var/context] [--protocols leave_last_out random_by_user]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from recpipe import storage
from recpipe.config import load_config
from recpipe.console import format_table
from recpipe.datasets.synthetic import SyntheticSpec, generate_events
from recpipe.spark import get_spark
from recpipe.stages.clean import run_clean
from recpipe.stages.evaluate import run_evaluate
from recpipe.stages.export import run_export
from recpipe.stages.features import run_features
from recpipe.stages.sessionize import run_sessionize
from recpipe.stages.split import run_split
from recpipe.stages.train import run_train
from recpipe.stages.train_baseline import run_train_baseline
from recpipe.stages.vocab import run_vocab
from recpipe.storage import as_location

DS = "2026-11-14"
K = 10
CONTEXT = (
    "features.context.device={kind: categorical}",
    "features.context.hour={kind: time, part: hour}",
)


def _chain(raw: Any, state: Any, args: argparse.Namespace, context: bool) -> dict[str, Any]:
    """ETL, export, popularity and the model on one state root; results by (protocol, run)."""
    storage.remove_tree(state)
    settings = [
        f"paths.root={state}", f"paths.raw_events={raw}",
        f"split.protocols=[{','.join(args.protocols)}]", "train.processes=1",
        f"train.max_epochs={args.epochs}", "export.kinds=[pointwise]",
        # One Spark session (one metastore) serves both roots: a database each.
        "score.train_on=protocol", f"warehouse.database=context_bench_{int(context)}",
        *(CONTEXT if context else ()),
    ]  # fmt: skip
    config = load_config(None, settings)
    spark = get_spark(config)
    for stage in (run_clean, run_vocab):
        stage(spark, config, DS)
    if context:
        run_features(spark, config, DS)
    for stage in (run_sessionize, run_split, run_export):
        stage(spark, config, DS)
    run_train_baseline(spark, config, DS, "popularity")
    _, reference = run_evaluate(spark, config, DS, ["popularity"])
    started = time.perf_counter()
    _, deep = run_train(spark, config, DS, [args.model])
    seconds = time.perf_counter() - started
    label = f"{args.model} + context" if context else args.model
    out = {}
    for evaluation in [*reference, *deep]:
        result = evaluation.result
        name = label if result.model == args.model else "popularity"
        out[(result.protocol.split_protocol, name)] = {
            "ndcg": result.values[("ndcg", K)],
            "text": result.metric_texts()[f"ndcg@{K}"],
            "recall": round(result.values[("recall", K)], 4),
            "seconds": round(seconds, 1) if name != "popularity" else None,
            "protocol": result.protocol.describe(K),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000, help="synthetic event count")
    parser.add_argument("--model", default="deepfm", help="a model that reads context")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of every training run")
    parser.add_argument("--root", type=Path, default=Path("var/context"), help="bench folder")
    parser.add_argument(
        "--protocols", nargs="+", default=["leave_last_out", "random_by_user"],
        help="split protocols to measure",
    )  # fmt: skip
    args = parser.parse_args(argv)
    root = as_location(args.root.resolve())
    raw = root / f"raw-{args.events}"
    if not storage.is_file(raw / "_generation.json"):
        spec = SyntheticSpec(n_events=args.events, days=14, n_files=2, seed=11, catalog=False)
        generate_events(spec, raw)
    results: dict[Any, dict[str, Any]] = {}
    for context in (False, True):
        results.update(_chain(raw, root / ("with" if context else "without"), args, context))
    rows = []
    for (protocol, name), found in sorted(results.items()):
        popular = results[(protocol, "popularity")]["ndcg"]
        rows.append({
            "protocol": protocol, "run": name, f"ndcg@{K} [95% CI]": found["text"],
            f"recall@{K}": found["recall"], "train s": found["seconds"],
            "ndcg / popularity": round(found["ndcg"] / popular, 3) if popular else None,
        })  # fmt: skip
    described = "; ".join(sorted({found["protocol"] for found in results.values()}))
    print(format_table(rows, title=f"event context, {args.events} synthetic events ({described})"))
    for protocol in args.protocols:
        plain = results[(protocol, args.model)]["ndcg"]
        with_context = results[(protocol, f"{args.model} + context")]["ndcg"]
        ratio = with_context / plain if plain else float("nan")
        print(f"{protocol}: ndcg@{K} with context / without = {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
