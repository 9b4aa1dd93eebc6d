"""Bootstrap benchmark: the Spark evaluation engine's resample sums against drawing the weights.

``evaluate`` (Spark engine) gives each evaluated user one row per cut-off K with its ranking
metrics; an executor turns its partition's rows into per-resample sums (``_ResampleSummer``),
so that only resamples x columns numbers reach the driver. Generated rows (``--users`` users,
each with one row per K in ``--ks``, seeded random metric values) in Arrow batches of
``--batch-rows`` rows, as Spark hands them to ``mapInArrow``; each timing the best of
``--repeats`` in this process:

- **weights** (reference): ``poisson_weights`` for every user once (users x resamples Poisson
  draws), the least any engine must compute;
- **resample sums**: the executor function over the batches, as ``evaluate`` runs it.

The sums must equal the one-process engine's (``ResampleSums.add`` per K). Prints seconds and
the ratio of the sums to the reference. Until 2026-12-07 the executor function drew each
user's weights once per K (4x the reference at 4 cut-offs, plus the sums).

    .venv/bin/python bench/bootstrap.py [--users 200000] [--resamples 1000] [--ks 1 5 10 20]
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
from bench_timing import best_seconds

from recpipe.console import format_table
from recpipe.evaluation.bootstrap import ResampleSums, poisson_weights
from recpipe.evaluation.metrics import METRICS
from recpipe.evaluation.spark_metrics import K, _ResampleSummer
from recpipe.schema import USER_IDX


def metric_batches(users: int, ks: list[int], batch_rows: int, seed: int) -> list[pa.RecordBatch]:
    """One row per (user, K) with random metric values, in batches of ``batch_rows``."""
    rng = np.random.default_rng(seed)
    table = pa.table(
        {
            USER_IDX: np.repeat(np.arange(users, dtype=np.int32), len(ks)),
            K: np.tile(np.asarray(ks, dtype=np.int32), users),
            **{name: rng.random(users * len(ks)) for name in METRICS},
        }
    )
    return table.to_batches(max_chunksize=batch_rows)


def per_k_sums(batches: list[pa.RecordBatch], ks: list[int], resamples: int) -> np.ndarray:
    """The independent check: each K's rows added to their own columns, one call per K."""
    sums = ResampleSums(len(ks) * len(METRICS), resamples, seed=0)
    table = pa.Table.from_batches(batches)
    users, at_k = table[USER_IDX].to_numpy(), table[K].to_numpy()
    for i, k in enumerate(ks):
        rows = at_k == k
        values = np.column_stack([table[name].to_numpy()[rows] for name in METRICS])
        sums.add(users[rows], values, range(i * len(METRICS), (i + 1) * len(METRICS)))
    return sums.sums


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000, help="evaluated users")
    parser.add_argument(
        "--resamples", type=int, default=1000, help="evaluation.bootstrap.resamples"
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20], help="evaluation.ks")
    parser.add_argument("--batch-rows", type=int, default=10_000, help="rows per Arrow batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    args = parser.parse_args(argv)
    ks = sorted(set(args.ks))
    batches = metric_batches(args.users, ks, args.batch_rows, seed=0)
    summer = _ResampleSummer(ks, args.resamples, seed=0)
    out = next(iter(summer(iter(batches))))
    got = out.column("total").to_numpy().reshape(args.resamples, -1)
    np.testing.assert_allclose(got, per_k_sums(batches, ks, args.resamples), rtol=1e-9)

    users = np.arange(args.users)
    step = max(1, (1 << 20) // args.resamples)  # the block ResampleSums draws at once

    def draw_weights() -> None:
        for start in range(0, args.users, step):
            poisson_weights(users[start : start + step], args.resamples, 0)

    reference = best_seconds(draw_weights, args.repeats)
    summed = best_seconds(lambda: list(summer(iter(batches))), args.repeats)
    rows = [
        {"run": "weights (reference)", "seconds": round(reference, 3), "ratio": 1.0},
        {
            "run": "resample sums",
            "seconds": round(summed, 3),
            "ratio": round(summed / reference, 2),
        },
    ]
    title = (
        f"{args.users:,} users x {len(ks)} cut-offs x {args.resamples} resamples, "
        f"{len(batches)} batches"
    )
    print(format_table(rows, title=title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
