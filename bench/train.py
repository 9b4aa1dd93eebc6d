"""Training benchmark: rows/s per model and launcher, and time to converge on MovieLens 100K.

Needs the exported MovieLens 100K samples of ``bench/quality.py`` (run it first, or pass
``--prepare``). Two parts, both on the machine this runs on (CPU unless CUDA is visible):

1. Throughput: each model trains ``--epochs`` epochs on ``leave_last_out`` with each launcher
   (``local`` x1, ``torchrun`` x2, ``spark`` TorchDistributor x2, and ``horovod`` x2 with the
   Petastorm loader when ``.venv-legacy`` exists), validation off. Printed
   as training rows/s and as a ratio to the reference measured in the same process: one
   epoch of the Arrow loader alone over the same files (rows/s with no model at all).
2. Convergence: GRU4Rec and SASRec train on ``leave_last_out`` with early stopping on the
   valid split; printed: wall seconds, epochs, and test NDCG@10 (full ranking, train items
   excluded) next to ALS's from the same root.

    .venv/bin/python bench/train.py [--root var/quality] [--models bpr_mf sasrec ...]
        [--launchers local torchrun spark horovod] [--epochs 1] [--skip-convergence]
        [--prepare]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recpipe.config import load_config
from recpipe.console import format_table

DS = "2026-11-22"
PROTOCOL = "leave_last_out"
MODELS = ("bpr_mf", "neumf", "two_tower", "gru4rec", "sasrec")
LEGACY_ENV = Path(__file__).resolve().parent.parent / ".venv-legacy"
HOROVOD = ("train.launcher=horovod", f"train.horovod_env={LEGACY_ENV}")
# name -> (processes, overrides)
LAUNCHERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "local": (1, ("train.launcher=local",)),
    "torchrun": (2, ("train.launcher=torchrun",)),
    "spark": (2, ("train.launcher=spark",)),
    "horovod": (2, (*HOROVOD, "train.loader=petastorm")),
    "horovod-arrow": (2, (*HOROVOD, "train.loader=arrow")),
}
HAVE_LEGACY = (LEGACY_ENV / "bin").is_dir()
DEFAULT_LAUNCHERS = [n for n in LAUNCHERS if HAVE_LEGACY or not n.startswith("horovod")]


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="var/quality", help="paths.root of bench/quality.py")
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="models to time")
    parser.add_argument(
        "--launchers", nargs="*", default=DEFAULT_LAUNCHERS, choices=list(LAUNCHERS),
        help="launchers to time (torchrun, spark and horovod use 2 processes; horovod reads "
        "through Petastorm, horovod-arrow through the Arrow loader, both in .venv-legacy: "
        "make legacy-venv)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=1, help="epochs per throughput run")
    parser.add_argument("--skip-convergence", action="store_true", help="only the throughput table")
    parser.add_argument(
        "--prepare", action="store_true", help="run bench/quality.py's data stages first"
    )
    return parser.parse_args()


def loader_reference(shards: list[tuple[str, int]], kind: str, batch_size: int) -> float:
    """Rows/s of one shuffled epoch of the Arrow loader alone (the same files, no model)."""
    from recpipe.data.arrow_loader import ArrowSampleDataset, ShardFile, make_loader

    dataset = ArrowSampleDataset([ShardFile(p, r) for p, r in shards], kind, batch_size)
    started = time.perf_counter()
    rows = sum(len(batch) for batch in make_loader(dataset))
    return rows / (time.perf_counter() - started)


def throughput(args: argparse.Namespace, base: list[str]) -> list[dict[str, Any]]:
    """One row per model and launcher."""
    from recpipe.models import model_class
    from recpipe.spark import get_spark
    from recpipe.stages.train import build_spec
    from recpipe.train.launchers import launch

    get_spark(load_config(None, base))  # the spark launcher runs on the active session
    rows = []
    for name in args.models:
        reference = None
        for launcher in args.launchers:
            processes, overrides = LAUNCHERS[launcher]
            config = load_config(None, [*base, *overrides, f"train.processes={processes}",
                                        f"train.max_epochs={args.epochs}"])  # fmt: skip
            spec = build_spec(config, DS, PROTOCOL, name)
            spec.validation = None  # throughput only
            if reference is None:
                batch = spec.model_config["batch_size"]
                reference = loader_reference(spec.shards, model_class(name).sample_kind, batch)
            result = launch(spec, config.train)
            rate = result["rows_per_second"]
            rows.append(
                {
                    "model": name,
                    "launcher": f"{config.train.launcher} x{processes} ({config.train.loader})",
                    "device": result["device"],
                    "rows/epoch": sum(r for _, r in spec.shards),
                    "train rows/s": round(rate),
                    "loader-only rows/s (reference)": round(reference),
                    "train / loader": round(rate / reference, 4),
                    "seconds": result["seconds"],
                }
            )
    return rows


def convergence(base: list[str]) -> list[dict[str, Any]]:
    """Early-stopped GRU4Rec and SASRec on leave_last_out, with ALS's test NDCG@10 beside."""
    from recpipe.manifest import read_manifest
    from recpipe.spark import get_spark
    from recpipe.stages.train import run_train

    config = load_config(None, [*base, f"split.protocols=[{PROTOCOL}]", "train.launcher=local"])
    spark = get_spark(config)
    try:
        als = read_manifest(config.root, "evaluate-als", DS)
        als_ndcg = next(
            r["metrics"]["ndcg@10"] for r in als["results"]
            if r["protocol"]["split_protocol"] == PROTOCOL
        )  # fmt: skip
    except Exception:  # ALS not trained in this root: leave the column empty
        als_ndcg = None
    rows = []
    for name in ("gru4rec", "sasrec"):
        started = time.perf_counter()
        manifests, evaluations = run_train(spark, config, DS, [name])
        seconds = time.perf_counter() - started
        info = manifests[0]["protocols"][PROTOCOL]
        rows.append(
            {
                "model": name,
                "train wall s": round(info["wall_seconds"], 1),
                "with evaluation s": round(seconds, 1),
                "epochs (best)": f"{info['epochs_run']} ({info.get('best_epoch')})",
                "valid ndcg@10": info.get("best_valid_metric"),
                "test ndcg@10": round(evaluations[0].result.values[("ndcg", 10)], 4),
                "ALS test ndcg@10": als_ndcg,
            }
        )
    return rows


def main() -> None:
    """Run both parts and print their tables."""
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.prepare:
        subprocess.run(
            [sys.executable, str(Path(__file__).with_name("quality.py")), "--root", args.root,
             "--models", "--baselines", "als"], check=True,
        )  # fmt: skip
    base = [
        f"paths.root={args.root}",
        "split.protocols=[leave_last_out,random_by_user]",
        "warehouse.database=quality_bench",
        "score.train_on=protocol",  # throughput per protocol run; no serving refit
    ]
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={'yes' if torch.cuda.is_available() else 'no'}")  # fmt: skip
    rows = throughput(args, base)
    print(format_table(rows, title=f"training throughput, MovieLens 100K {PROTOCOL} samples, "
                       f"{args.epochs} epoch(s), validation off"))  # fmt: skip
    if not args.skip_convergence:
        print()
        print(
            format_table(
                convergence(base),
                title="time to early-stopped convergence, "
                f"{PROTOCOL}; test = full ranking, train items excluded, K=10",
            )
        )


if __name__ == "__main__":
    main()
