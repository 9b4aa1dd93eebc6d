"""Evaluation ranking benchmark: the per-block top-K of ``evaluate`` and training validation
against the block's own score matmul.

Generated factors (seeded normal, ``--items`` x ``--dim``), one block of users as large as
``evaluation.block_mib`` allows at that catalogue size (``users_per_block``), ``--seen``
random history items per user masked. For float32 score rows (deep models) and float64 rows
(baselines), each timing the best of ``--repeats`` in this process:

- **matmul** (reference): the block's scores, ``users x dim @ dim x items``, alone;
- **rank numpy**: ``top_k`` on those rows with torch hidden (the fallback: threshold,
  comparisons, counts and gathers, about eight passes over the block);
- **rank torch**: ``top_k`` as it runs with torch installed (one ``torch.topk`` pass, the
  scoring job's exact top-K).

Both rankings must return the same items and scores. Prints ms per block and the ratio of
each ranking to the matmul. Torch uses ``--threads`` threads (default 1: a Spark task's
share on a 2-core executor).

    .venv/bin/python bench/ranking.py [--items 99000] [--dim 256] [--k 20] [--seen 40]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np
import torch
from bench_timing import best_seconds

from recpipe.console import format_table
from recpipe.evaluation.ranking import Csr, top_k, users_per_block


def ranking_of(
    scores: np.ndarray, block: np.ndarray, k: int, n_items: int, seen: Csr
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """``top_k`` of the fixed score rows ``scores`` (what evaluation runs after the scorer)."""
    return lambda: top_k(lambda _: scores, block, k, n_items, seen, batch=len(block))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=99_000, help="catalogue size")
    parser.add_argument("--dim", type=int, default=256, help="factor dimension")
    parser.add_argument("--k", type=int, default=20, help="list length (evaluation's largest K)")
    parser.add_argument("--seen", type=int, default=40, help="masked history items per user")
    parser.add_argument("--block-mib", type=int, default=256, help="evaluation.block_mib")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_users = users_per_block(args.items, 1024, args.block_mib, "--block-mib")
    generator = torch.Generator().manual_seed(0)
    users = torch.randn(n_users, args.dim, generator=generator)
    items = torch.randn(args.items + 1, args.dim, generator=generator)
    rng = np.random.default_rng(0)
    seen_items = rng.integers(1, args.items + 1, n_users * args.seen)
    seen = (np.arange(n_users + 1) * args.seen, seen_items)
    block = np.arange(n_users)
    rows32 = (users @ items.T).numpy()
    rows = {"float32 (deep)": rows32, "float64 (baseline)": rows32.astype(np.float64)}
    matmul_ms = best_seconds(lambda: users @ items.T, args.repeats) * 1000
    table = []
    for label, scores in rows.items():
        rank = ranking_of(scores, block, args.k, args.items, seen)
        torch_ms = best_seconds(rank, args.repeats) * 1000
        torch_result = rank()
        hidden = sys.modules.get("torch")
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` now fails
        try:
            numpy_ms = best_seconds(rank, args.repeats) * 1000
            numpy_result = rank()
        finally:
            sys.modules["torch"] = hidden  # type: ignore[assignment]
        same = all(np.array_equal(a, b) for a, b in zip(torch_result, numpy_result, strict=True))
        table.append({
            "rows": label, "users/block": n_users, "matmul ms": round(matmul_ms, 1),
            "rank numpy ms": round(numpy_ms, 1), "rank torch ms": round(torch_ms, 1),
            "numpy/matmul": round(numpy_ms / matmul_ms, 2),
            "torch/matmul": round(torch_ms / matmul_ms, 2),
            "numpy/torch": round(numpy_ms / torch_ms, 2), "same lists": same,
        })  # fmt: skip
    title = f"{args.items:,} items x {args.dim} dims, k={args.k}, {args.threads} thread(s)"
    print(format_table(table, title=title))
    return 0 if all(row["same lists"] for row in table) else 1


if __name__ == "__main__":
    raise SystemExit(main())
