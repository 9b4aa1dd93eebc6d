"""Optimizer step cost on embedding tables: dense AdamW vs the row-lazy AdamW of recpipe,
with dense and with sparse embedding gradients.

A BPR-MF-shaped model (a user table and an item table, ``--dim`` wide; users and items as
``bench/scale.py`` generates them for ``--events``) trains ``--steps`` steps of batches of
``--batch`` (user, positive, negative) triples. Printed per optimizer: milliseconds per step
(forward + backward + step) and the ratio to the reference measured in the same process,
torch's own ``AdamW`` (foreach) over the same model and batches. "RowLazyAdamW" takes the
dense table-sized gradients every backend reduces; "+ sparse gradients" is what a
single-process run uses (``train.sparse_embedding_gradients``): only the batch's rows.

    .venv/bin/python bench/optimizer.py [--events 5000000 50000000] [--dim 256] [--batch 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from recpipe.console import format_table
from recpipe.train.optim import RowLazyAdamW, parameter_groups, use_sparse_embedding_gradients

SPARSE = "RowLazyAdamW + sparse gradients"


class Pairs(nn.Module):
    """Users and items as two embedding tables; BPR loss on dot products."""

    def __init__(self, users: int, items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(users, dim)
        self.items = nn.Embedding(items, dim)

    def forward(self, user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        u = self.users(user)
        margin = (u * self.items(pos)).sum(-1) - (u * self.items(neg)).sum(-1)
        return -nn.functional.logsigmoid(margin).mean()


def per_step_ms(
    model: Pairs, optimizer: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, ...]]
) -> float:
    """Mean wall milliseconds of one training step over ``batches`` (after one warm-up)."""
    for number, batch in enumerate([batches[0], *batches]):
        if number == 1:
            started = time.perf_counter()
        optimizer.zero_grad()
        model(*batch).backward()
        optimizer.step()
    return (time.perf_counter() - started) * 1000 / len(batches)


def main() -> int:
    """Time both optimizers per size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        nargs="*",
        default=[5_000_000, 50_000_000],
        help="generated-log sizes whose user and item counts to use",
    )
    parser.add_argument("--dim", type=int, default=256, help="embedding width (BPR-MF's default)")
    parser.add_argument("--batch", type=int, default=1024, help="triples per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per optimizer")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, object]] = []
    for events in args.events:
        users, items = events // 40, min(events // 200, 200_000)  # as bench/scale.py generates
        generator = torch.Generator().manual_seed(0)
        batches = [
            (
                torch.randint(0, users, (args.batch,), generator=generator),
                torch.randint(0, items, (args.batch,), generator=generator),
                torch.randint(0, items, (args.batch,), generator=generator),
            )
            for _ in range(args.steps)
        ]
        timings = {}
        for name in ("AdamW (reference)", "RowLazyAdamW", SPARSE):
            torch.manual_seed(0)
            model = Pairs(users, items, args.dim)
            if name == SPARSE:
                use_sparse_embedding_gradients(model)
            if name.startswith("AdamW"):
                optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            else:
                optimizer = RowLazyAdamW(parameter_groups(model, lazy_embeddings=True), lr=1e-3)
            timings[name] = per_step_ms(model, optimizer, batches)
            del model, optimizer
        reference = timings["AdamW (reference)"]
        for name, ms in timings.items():
            rows.append(
                {
                    "events": f"{events:,}",
                    "users x items": f"{users:,} x {items:,}",
                    "optimizer": name,
                    "ms/step": round(ms, 1),
                    "speed vs AdamW": f"{reference / ms:.1f}x",
                }
            )
    print(format_table(rows, f"optimizer step, dim {args.dim}, batch {args.batch}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
