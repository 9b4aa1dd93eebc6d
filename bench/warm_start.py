"""Warm-start benchmark: what a daily run costs when it starts from yesterday's model.

Synthetic logs (``--events``, spanning 2026-11-01 .. 2026-11-21) are cleaned twice, as two
scheduled days: ds 2026-11-20 (events up to that day) and ds 2026-11-21 (one more day).
Day 1 trains BPR-MF in full. Day 2 trains it twice, same settings and epochs: first as a full
retrain on every sample (the named reference, ``train.warm_start.enabled=false``), then warm
from day 1's model on the last ``--window-days`` days' samples. Printed per run: samples
trained on, training seconds, and test NDCG@10 (leave_last_out, full ranking, train items
excluded), then the warm/full ratios of samples and seconds.

    .venv/bin/python bench/warm_start.py [--events 1000000] [--window-days 1] [--root var/warm]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from recpipe import storage
from recpipe.config import load_config
from recpipe.console import format_table
from recpipe.datasets.synthetic import SyntheticSpec, generate_events
from recpipe.spark import get_spark
from recpipe.stages.clean import run_clean
from recpipe.stages.export import run_export
from recpipe.stages.sessionize import run_sessionize
from recpipe.stages.split import run_split
from recpipe.stages.train import run_train
from recpipe.stages.vocab import run_vocab
from recpipe.storage import as_location

DAY1, DAY2 = "2026-11-20", "2026-11-21"
MODEL = "bpr_mf"
PROTOCOL = "leave_last_out"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="synthetic event count")
    parser.add_argument("--window-days", type=int, default=1, help="warm runs train on this")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every training run")
    parser.add_argument("--root", type=Path, default=Path("var/warm"), help="bench folder")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    raw = as_location(root) / f"raw-{args.events}"
    if not storage.is_file(raw / "_generation.json"):
        generate_events(SyntheticSpec(n_events=args.events, n_files=4, seed=3), raw)
    state = as_location(root) / "state"
    storage.remove_tree(state)
    settings = [
        f"paths.root={state}", f"paths.raw_events={raw}", f"split.protocols=[{PROTOCOL}]",
        # Each day's clean keeps the events up to its own day: the next day's are not yet in.
        "clean.ts_max_days_after_ds=0", "train.processes=1", f"train.max_epochs={args.epochs}",
        "train.early_stopping.every_epochs=1000", "export.kinds=[pairwise]",
        "train.warm_start.enabled=true", f"train.warm_start.window_days={args.window_days}",
    ]  # fmt: skip
    config = load_config(None, settings)
    spark = get_spark(config)
    rows = []
    plan = [(DAY1, [("day 1 full", True)]),
            (DAY2, [("day 2 full (reference)", False), ("day 2 warm", True)])]  # fmt: skip
    for day, runs in plan:
        for stage in (run_clean, run_vocab, run_sessionize, run_split, run_export):
            stage(spark, config, day)
        for label, warm in runs:
            run_config = load_config(None, [*settings, f"train.warm_start.enabled={warm}"])
            started = time.perf_counter()
            manifests, evaluations = run_train(spark, run_config, day, [MODEL])
            seconds = time.perf_counter() - started
            record = manifests[0]["protocols"][PROTOCOL]
            [evaluation] = evaluations
            rows.append({
                "run": label, "start": record["start"]["mode"], "samples": record["rows"],
                "train_s": round(record["seconds"], 1), "with_eval_s": round(seconds, 1),
                "test_ndcg@10": round(evaluation.result.values[("ndcg", 10)], 4),
            })  # fmt: skip
    print(format_table(rows, title=f"warm start, {MODEL}, {args.epochs} epochs, {PROTOCOL}"))
    reference, warm_run = rows[1], rows[2]
    print(f"day 2 warm / full: samples {warm_run['samples'] / reference['samples']:.3f}x, "
          f"training time {warm_run['train_s'] / reference['train_s']:.3f}x")  # fmt: skip
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
