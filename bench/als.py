"""ALS benchmark: Spark MLlib implicit ALS against the ``implicit`` library's CPU ALS.

Both fit the same users x items matrix (every MovieLens 100K rating as an implicit positive of
weight 1 by default, or a seeded Zipf-like random matrix) with the same rank, regularization,
alpha (confidence 1 + alpha * weight in both) and iteration count, in one process. Each fit is
timed for ``--iters`` N iterations and for 1 iteration, giving seconds per iteration two ways:
(t_N - t_1) / (N - 1), which cancels each library's fixed per-fit cost (for Spark: job set-up,
rating blocking, factor output), and the plain t_N / N. ``implicit`` runs both its solvers:
conjugate gradient (its default, 3 CG steps per solve) and the exact Cholesky solve, which is
what Spark does. Each library is warmed up first with an untimed 1-iteration fit on the same
matrix, so JVM class loading/JIT and thread-pool start-up are excluded from the timings.

The regularization value is the same number on both sides but does not mean the same thing:
Spark multiplies lambda by each user's (item's) rating count (ALS-WR), ``implicit`` adds
lambda * I unscaled. ``implicit`` uses as many threads as Spark has local cores, with its BLAS
thread pool limited to 1, as that library recommends.

``implicit`` is not a recpipe dependency: install it into the venv first.

    .venv/bin/pip install implicit==0.7.3
    .venv/bin/python bench/als.py [--rank 64] [--iters 15] [--alpha 3] [--reg 0.3] \
        [--root var/bench-als] [--synthetic-users 50000 --synthetic-items 10000 --density 0.002]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
from bench_timing import best_seconds
from scipy import sparse

from recpipe.baselines.als import blas_in_use
from recpipe.config import AlsConfig, MovieLensConfig, load_config
from recpipe.console import format_table
from recpipe.datasets.movielens import NAME as MOVIELENS
from recpipe.datasets.movielens import load_ratings_file, parse_ratings
from recpipe.spark import get_spark

SEED = 42
USER_ZIPF = 0.5  # exponent of the synthetic users' activity distribution
ITEM_ZIPF = 0.8  # exponent of the synthetic items' popularity distribution
IMPLICIT_VERSION = "0.7.3"


@dataclass
class Timing:
    """Seconds of one library's warm-up, 1-iteration and N-iteration fits."""

    library: str
    solver: str
    threads: int
    warmup_s: float
    fit_1_s: float
    fit_n_s: float
    iters: int

    @property
    def marginal_per_iter(self) -> float | None:
        """(t_N - t_1) / (N - 1): per-iteration cost without the fixed per-fit cost."""
        if self.iters < 2:
            return None
        return (self.fit_n_s - self.fit_1_s) / (self.iters - 1)

    @property
    def mean_per_iter(self) -> float:
        """t_N / N: per-iteration cost with the fixed cost spread over the iterations."""
        return self.fit_n_s / self.iters


def import_implicit() -> ModuleType | None:
    """The ``implicit.cpu.als`` module, or None when the package is not installed."""
    try:
        import implicit.cpu.als as implicit_als
    except ImportError:
        return None
    return implicit_als


def movielens_matrix(root: Path) -> tuple[sparse.csr_matrix, str]:
    """Users x items CSR of MovieLens 100K, 1.0 for every rated pair, ids mapped densely."""
    cache = root / "cache" / MOVIELENS
    rows = parse_ratings(load_ratings_file(MovieLensConfig(), cache, cache / "downloads"))
    _, users = np.unique(np.array([r[0] for r in rows]), return_inverse=True)
    _, items = np.unique(np.array([r[1] for r in rows]), return_inverse=True)
    matrix = sparse.csr_matrix(
        (np.ones(len(rows)), (users, items)), shape=(users.max() + 1, items.max() + 1)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix, "MovieLens 100K, all ratings as weight 1"


def zipf_weights(size: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities proportional to 1 / rank**exponent, assigned to shuffled indexes."""
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return rng.permutation(weights / weights.sum())


def synthetic_matrix(
    n_users: int, n_items: int, density: float, seed: int = SEED
) -> tuple[sparse.csr_matrix, str]:
    """Seeded users x items CSR with ``density`` of its cells 1.0, Zipf-like on both axes."""
    target = round(n_users * n_items * density)
    if not 0 < density <= 0.5 or target < 1:
        raise SystemExit(
            f"--density must give at least 1 and at most half the cells, got {density}"
        )
    rng = np.random.default_rng(seed)
    user_p = zipf_weights(n_users, USER_ZIPF, rng)
    item_p = zipf_weights(n_items, ITEM_ZIPF, rng)
    keys = np.empty(0, dtype=np.int64)
    for _ in range(100):  # popular pairs repeat: draw again until enough distinct pairs exist
        need = target - len(keys)
        if need <= 0:
            break
        size = int(need * 1.3) + 16
        users = rng.choice(n_users, size=size, p=user_p)
        items = rng.choice(n_items, size=size, p=item_p)
        keys = np.unique(np.concatenate([keys, users * n_items + items]))
    keys = rng.permutation(keys)[:target]
    matrix = sparse.csr_matrix(
        (np.ones(len(keys)), (keys // n_items, keys % n_items)), shape=(n_users, n_items)
    )
    note = f"synthetic, seed {seed}, Zipf exponents users {USER_ZIPF} / items {ITEM_ZIPF}"
    return matrix, note


def time_library(
    library: str, solver: str, threads: int, fit: Callable[[int], None], iters: int, repeats: int
) -> Timing:
    """Warm up with a 1-iteration fit (reported apart), then time 1 and N iterations."""
    start = time.perf_counter()
    fit(1)
    warmup = time.perf_counter() - start
    fit_1 = best_seconds(partial(fit, 1), repeats, warm_up=False)
    fit_n = best_seconds(partial(fit, iters), repeats, warm_up=False)
    return Timing(library, solver, threads, warmup, fit_1, fit_n, iters)


def spark_fit(spark: Any, matrix: sparse.csr_matrix, args: argparse.Namespace) -> Callable:
    """A function fitting MLlib implicit ALS for a number of iterations on ``matrix``."""
    from pyspark.ml.recommendation import ALS

    coo = matrix.tocoo()
    table = pa.table(
        {
            "user_idx": pa.array(coo.row, type=pa.int32()),
            "item_idx": pa.array(coo.col, type=pa.int32()),
            "weight": pa.array(coo.data, type=pa.float32()),
        }
    )
    # Spread over the cores and cached, like ratings read from the lake; a one-partition local
    # DataFrame would also ship all ratings inside every task of every fit.
    cores = spark.sparkContext.defaultParallelism
    ratings = spark.createDataFrame(table).repartition(cores).cache()
    ratings.count()  # the Python -> JVM transfer is not part of any timing
    defaults = AlsConfig()  # block counts and seed as the project's Als baseline uses them

    def fit(iters: int) -> None:
        ALS(
            rank=args.rank,
            maxIter=iters,
            regParam=args.reg,
            alpha=args.alpha,
            implicitPrefs=True,
            numUserBlocks=defaults.num_user_blocks,
            numItemBlocks=defaults.num_item_blocks,
            seed=defaults.seed,
            userCol="user_idx",
            itemCol="item_idx",
            ratingCol="weight",
        ).fit(ratings)  # ALS.fit materialises both factor sets before it returns

    return fit


def implicit_fit(
    module: ModuleType, matrix: sparse.csr_matrix, args: argparse.Namespace, threads: int, cg: bool
) -> Callable:
    """A function fitting ``implicit``'s CPU ALS for a number of iterations on ``matrix``."""
    from threadpoolctl import threadpool_limits

    user_items = matrix.astype(np.float32)

    def fit(iters: int) -> None:
        with threadpool_limits(1, "blas"):
            model = module.AlternatingLeastSquares(
                factors=args.rank,
                regularization=args.reg,
                alpha=args.alpha,
                iterations=iters,
                use_cg=cg,
                num_threads=threads,
                random_state=SEED,
            )
            model.fit(user_items, show_progress=False)

    return fit


def ratio(numerator: float | None, denominator: float | None) -> str:
    """``numerator / denominator`` as "12.3x", or "n/a"."""
    if numerator is None or not denominator:
        return "n/a"
    return f"{numerator / denominator:.1f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--alpha", type=float, default=3.0)
    parser.add_argument("--reg", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=1, help="timed fits each; the best counts")
    parser.add_argument("--root", type=Path, default=Path("var/bench-als"))
    parser.add_argument(
        "--synthetic-users", type=int, help="use a random matrix of this many users"
    )
    parser.add_argument("--synthetic-items", type=int, default=10_000)
    parser.add_argument("--density", type=float, default=0.002)
    args = parser.parse_args(argv)
    if args.iters < 2:
        parser.error("--iters must be at least 2 to separate per-iteration from fixed cost")

    module = import_implicit()
    if module is None:
        print(
            "bench/als.py compares against the `implicit` package, which is not a recpipe "
            f"dependency and is not installed in {sys.prefix}.\nInstall it into the venv and run "
            f"again:\n\n    {sys.prefix}/bin/pip install implicit=={IMPLICIT_VERSION}\n",
            file=sys.stderr,
        )
        return 2
    import implicit

    root = args.root.resolve()
    if args.synthetic_users:
        matrix, source = synthetic_matrix(args.synthetic_users, args.synthetic_items, args.density)
    else:
        matrix, source = movielens_matrix(root)
    shape = f"{matrix.shape[0]:,} x {matrix.shape[1]:,}"
    density = matrix.nnz / (matrix.shape[0] * matrix.shape[1])
    print(f"matrix: {source}: {shape}, nnz {matrix.nnz:,} (density {density:.4%})", flush=True)

    spark = get_spark(load_config(None, [f"paths.root={root}/spark"]))
    cores = spark.sparkContext.defaultParallelism
    name = f"implicit {implicit.__version__}"
    fits = [
        ("spark mllib", "cholesky", spark_fit(spark, matrix, args)),
        (name, "cg", implicit_fit(module, matrix, args, cores, cg=True)),
        (name, "cholesky", implicit_fit(module, matrix, args, cores, cg=False)),
    ]
    timings = [
        time_library(library, solver, cores, fit, args.iters, args.repeats)
        for library, solver, fit in fits
    ]
    rows = [
        {
            "library": t.library,
            "solver": t.solver,
            "threads": t.threads,
            "warmup_1it_s": round(t.warmup_s, 3),
            "fit_1it_s": round(t.fit_1_s, 3),
            f"fit_{t.iters}it_s": round(t.fit_n_s, 3),
            "s/iter (tN-t1)/(N-1)": round(t.marginal_per_iter or 0.0, 4),
            "s/iter tN/N": round(t.mean_per_iter, 4),
            "matrix": shape,
            "nnz": matrix.nnz,
        }
        for t in timings
    ]
    title = (
        f"implicit ALS, rank {args.rank}, {args.iters} iterations, alpha {args.alpha}, "
        f"reg {args.reg}, best of {args.repeats} ({spark.sparkContext.master}, {cores} cores)"
    )
    print(format_table(rows, title=title))
    spark_t = timings[0]
    for other in timings[1:]:
        print(
            f"spark / {other.library} ({other.solver}) per iteration: "
            f"{ratio(spark_t.marginal_per_iter, other.marginal_per_iter)} by (tN-t1)/(N-1), "
            f"{ratio(spark_t.mean_per_iter, other.mean_per_iter)} by tN/N"
        )
    print(f"spark {spark.version} MLlib BLAS: {blas_in_use(spark)}")
    print(
        "notes: each library was warmed up with one 1-iteration fit on this matrix before timing"
        " (JVM/JIT and thread-pool start-up excluded).\n"
        f"  regularization {args.reg} is passed to both but means different things: Spark "
        "scales lambda by each user's/item's rating count (ALS-WR), implicit adds it unscaled.\n"
        "  confidence is 1 + alpha * weight in both; Spark solves each least-squares problem "
        "exactly (Cholesky), implicit's default is 3 conjugate-gradient steps.\n"
        f"  implicit num_threads = Spark's local cores = {cores}, its BLAS pool limited to 1."
    )
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
