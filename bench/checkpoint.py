"""Checkpoint write cost for a BPR-MF-sized model with its AdamW moments.

A training checkpoint (``last.pt``) holds the weights and both optimizer moments: three
tables of (users + items) x ``--dim`` floats, users and items as ``bench/scale.py`` generates
them for ``--events``. Printed per size: seconds and peak extra RSS of

- the reference: the same tensors' bytes written to a file and fsynced (the disk's speed);
- ``in memory first``: ``torch.save`` to a ``BytesIO``, then one write (recpipe before
  streaming, still the path for object stores);
- ``streamed``: :func:`recpipe.train.checkpoint.save_atomic` (``torch.save`` straight into a
  temporary file beside the target, fsync, rename).

Each write is timed best of ``--repeats`` rounds; the ratio is against the reference.

    .venv/bin/python bench/checkpoint.py [--events 5000000 20000000] [--dim 256] [--dir var/ckpt]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from recpipe import storage
from recpipe.console import format_table
from recpipe.train.checkpoint import save_atomic

REFERENCE = "raw bytes + fsync (reference)"


def _state(events: int, dim: int) -> dict[str, object]:
    """Weights and two AdamW moments shaped like BPR-MF's at ``events`` generated events."""
    users, items = events // 40, min(events // 200, 200_000)
    tables = {
        name: torch.randn(rows, dim) for name, rows in (("users", users + 1), ("items", items + 1))
    }
    moments = {f"{k}.{m}": torch.rand_like(v) for k, v in tables.items() for m in ("m", "v")}
    return {"state_dict": tables, "optimizer": moments, "progress": {"step": 500}}


def _raw_write(state: dict[str, object], path: Path) -> None:
    """Every tensor's bytes to one file, fsynced: no serialisation format at all."""
    with open(path, "wb") as handle:
        for group in ("state_dict", "optimizer"):
            for tensor in state[group].values():  # type: ignore[attr-defined]
                handle.write(tensor.numpy().data)
        handle.flush()
        os.fsync(handle.fileno())


def _in_memory_first(state: dict[str, object], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(path, buffer.getvalue())


def measure(events: int, dim: int, repeats: int, folder: Path) -> list[dict[str, object]]:
    """The three writes of one size's checkpoint, as table rows.

    The writes take turns (reference, streamed, in memory, then again), so that the disk's
    write-back state, which moves fsync times by seconds here, falls on all of them alike;
    each keeps its fastest. Peak RSS growth is read in the first round, where ``ru_maxrss``
    (which only grows) still separates them: the write needing least memory goes first.
    """
    state = _state(events, dim)
    tensors = [t for group in ("state_dict", "optimizer") for t in state[group].values()]  # type: ignore[attr-defined]
    size_mib = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    target = folder / "last.pt"
    runs: dict[str, Callable[[], None]] = {
        REFERENCE: lambda: _raw_write(state, folder / "raw.bin"),
        "streamed (save_atomic)": lambda: save_atomic(state, target),
        "in memory first": lambda: _in_memory_first(state, target),
    }
    best = dict.fromkeys(runs, float("inf"))
    grown = dict.fromkeys(runs, 0.0)
    for round_number in range(repeats):
        for name, run in runs.items():
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
            if round_number == 0:
                rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                grown[name] = (rss_after - rss_before) / 1024
    return [
        {
            "events": f"{events:,}",
            "checkpoint MiB": round(size_mib),
            "write": name,
            "seconds": round(seconds, 2),
            "vs reference": f"{seconds / best[REFERENCE]:.2f}x",
            "peak RSS growth MiB": round(grown[name]),
        }
        for name, seconds in best.items()
    ]


def main() -> int:
    """Time the three writes per size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events", type=int, nargs="*", default=[5_000_000, 20_000_000],
        help="generated-log sizes whose user and item counts shape the tables",
    )  # fmt: skip
    parser.add_argument("--dim", type=int, default=256, help="embedding width (BPR-MF's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the three writes")
    parser.add_argument("--dir", default="var/ckpt", help="local folder written to (removed after)")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    try:
        for events in args.events:
            rows += measure(events, args.dim, args.repeats, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(format_table(rows, f"checkpoint write, dim {args.dim}, best of {args.repeats}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
