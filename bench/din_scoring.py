"""DIN full-ranking throughput against the matmul bound of its attention unit.

DIN's score for a (user, candidate) pair runs the attention unit over every history item, so
scoring every item (validation during training, the score stage) costs users x items x
history x (dim + 1) x attention width multiply-adds in the unit's first layer alone. Two
timings in this process, with every core torch uses:

- **recpipe**: ``Din.score_all`` on ``--users`` histories of ``--history`` random items against
  every one of ``--items`` items (a model with generated weights, the defaults of
  ``conf/models/din.yaml`` unless set here).
- **bound**: those first-layer multiply-adds alone at the FLOP/s a plain torch matrix product
  of the same shape reaches here (one [history x (dim + 1)] by [(dim + 1) x items * width]
  product per user, into a reused buffer). The rest of the model (ReLU, the unit's output
  layer, pooling, the top MLP) is not in the bound, so the ratio is at most 1.

Prints pairs/s for both and their ratio for each ``--chunks`` value (``score_chunk_pairs``);
``--json FILE`` writes them.

    .venv/bin/python bench/din_scoring.py [--users 256] [--items 1682] [--history 50] \
        [--chunks 1024 2048 4096 8192] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np
import torch
from bench_timing import best_seconds

from recpipe.data.batch import Batch
from recpipe.model_settings import DinConfig
from recpipe.models import ModelContext, model_class


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=256, help="histories scored")
    parser.add_argument("--items", type=int, default=1682, help="catalogue size (ML-100K: 1682)")
    parser.add_argument("--history", type=int, default=50, help="history window (export.max_len)")
    parser.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=[1024, 2048, 4096, 8192],
        help="score_chunk_pairs values to time",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each (best kept)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def main() -> None:
    """Time DIN's score_all and the bound; print the table and ratios."""
    args = parse_args()
    cls = model_class("din")
    defaults = DinConfig.model_validate({})  # conf/models/din.yaml
    counts = np.ones(args.items + 1, dtype=np.int64)
    counts[0] = 0
    context = ModelContext(
        n_users=args.users, n_items=args.items, max_len=args.history, item_counts=counts
    )
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        users=torch.arange(args.users),
        items=torch.randint(1, args.items + 1, (args.users,), generator=g),
        history=torch.randint(1, args.items + 1, (args.users, args.history), generator=g),
    )
    dim, width = defaults.dim, defaults.attention_layers[0]
    pairs = args.users * (args.items + 1)
    h1 = torch.randn(args.history, dim + 1, generator=g)
    maps = torch.randn(dim + 1, (args.items + 1) * width, generator=g)
    out = torch.empty(args.history, maps.shape[1])  # reused: the bound pays no allocation
    with torch.no_grad():
        matmul_s = (
            # More runs than the model's: a short product's best time is the noisier one.
            best_seconds(lambda: [torch.mm(h1, maps, out=out) for _ in range(16)], 3 * args.repeats)
            / 16
        )
    bound = (args.items + 1) / matmul_s  # pairs/s: one product covers one user's pairs
    flops = 2 * args.history * (dim + 1) * (args.items + 1) * width / matmul_s
    print(
        f"DIN dim {dim}, attention {defaults.attention_layers}, history {args.history}, "
        f"{args.users} users x {args.items + 1} items, {torch.get_num_threads()} threads"
    )
    print(f"bound: first attention layer at {flops / 1e9:.1f} GFLOP/s = {bound:,.0f} pairs/s")
    rows = []
    for chunk in args.chunks:
        torch.manual_seed(0)
        model = cls(DinConfig.model_validate({"score_chunk_pairs": chunk}), context).eval()
        with torch.no_grad():
            seconds = best_seconds(partial(model.score_all, batch), args.repeats)
        rows.append(
            {
                "chunk": chunk,
                "seconds": seconds,
                "pairs_per_s": pairs / seconds,
                "bound_pairs_per_s": bound,
                "ratio": pairs / seconds / bound,
            }
        )
    print(f"{'score_chunk_pairs':>18} {'seconds':>8} {'pairs/s':>10} {'/ bound':>8}")
    for row in rows:
        print(
            f"{row['chunk']:>18} {row['seconds']:>8.2f} {row['pairs_per_s']:>10,.0f} "
            f"{row['ratio']:>8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
