"""Arrow loader benchmark: the loader's rows/s against a raw pyarrow scan of the same files.

Generates synthetic Parquet sample files (the export stage's schema) in a temporary folder
under --dir, then in the same process times, per kind:

* raw: ``ParquetFile.iter_batches`` over every file, the same columns the loader reads,
  list columns flattened, every column converted to numpy (no shuffling, no tensors);
* loader: one full shuffled epoch of ``ArrowSampleDataset`` through ``make_loader`` with
  0 workers and with --workers workers (worker start-up included: workers restart each
  epoch), counting the rows of every yielded Batch.

Each figure is the best of --repeat runs (page cache warm). The ratio column is loader rows/s
over raw rows/s (the product target is >= 0.8). The load average is printed because other
processes on a small machine move these numbers a lot.

    .venv/bin/python bench/loader.py [--kind all] [--rows N] [--files 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recpipe.console import format_table
from recpipe.data.arrow_loader import (
    READ_BATCH_ROWS,
    ArrowSampleDataset,
    ShardFile,
    make_loader,
)
from recpipe.data.batch import SAMPLE_KINDS
from recpipe.schema import HISTORY, HISTORY_TS, ITEM_IDX, LABEL, NEGATIVES, TS, USER_IDX

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "var" / "bench" / "loader"
# Per-kind default row counts: sized so `--kind all` runs in a couple of minutes on 2 cores.
DEFAULT_ROWS = {"pairwise": 2_000_000, "pointwise": 2_000_000, "sequence": 300_000}
N_USERS, N_ITEMS = 200_000, 100_000


def generate(kind: str, rows: int, files: int, negatives: int, seq_len: int, out: Path):
    """Write ``files`` Parquet files of ``kind`` samples into ``out``; their ShardFiles."""
    rng = np.random.default_rng(7)
    shards = []
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        n = len(part)
        columns: dict[str, pa.Array] = {
            USER_IDX: pa.array(rng.integers(1, N_USERS, n, dtype=np.int32)),
        }
        if kind == "sequence":
            # Left padding: a random number of leading zeros per row, like short histories.
            hist = rng.integers(1, N_ITEMS, (n, seq_len), dtype=np.int32)
            pad = rng.integers(0, seq_len, n)
            hist[np.arange(seq_len)[None, :] < pad[:, None]] = 0
            ts = np.where(hist > 0, 1_700_000_000 + np.arange(seq_len, dtype=np.int64), 0)
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * seq_len)
            columns[HISTORY] = pa.ListArray.from_arrays(offsets, pa.array(hist.ravel()))
            columns[HISTORY_TS] = pa.ListArray.from_arrays(offsets, pa.array(ts.ravel()))
            columns[ITEM_IDX] = pa.array(rng.integers(1, N_ITEMS, n, dtype=np.int32))
            columns[TS] = pa.array(
                np.full(n, 1_700_000_000_000_000, dtype=np.int64), pa.timestamp("us", tz="UTC")
            )
        else:
            columns[ITEM_IDX] = pa.array(rng.integers(1, N_ITEMS, n, dtype=np.int32))
            if kind == "pairwise":
                neg = rng.integers(1, N_ITEMS, n * negatives, dtype=np.int32)
                offsets = pa.array(np.arange(n + 1, dtype=np.int32) * negatives)
                columns[NEGATIVES] = pa.ListArray.from_arrays(offsets, pa.array(neg))
            else:
                columns[LABEL] = pa.array((rng.random(n) < 0.2).astype(np.float32))
        path = out / f"part-{i:05d}.parquet"
        pq.write_table(pa.table(columns), path)
        shards.append(ShardFile(str(path), n))
    return shards


def loader_columns(kind: str) -> list[str]:
    """What the loader reads for ``kind`` (history_ts is off by default)."""
    return {
        "pairwise": [USER_IDX, ITEM_IDX, NEGATIVES],
        "pointwise": [USER_IDX, ITEM_IDX, LABEL],
        "sequence": [USER_IDX, ITEM_IDX, HISTORY],
    }[kind]


def raw_scan(shards: list[ShardFile], columns: list[str]) -> float:
    """Seconds to decode ``columns`` of every file to numpy: the reference floor."""
    start = time.perf_counter()
    rows = 0
    for shard in shards:
        with pq.ParquetFile(shard.path) as reader:
            for batch in reader.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
                for array in batch.columns:
                    if pa.types.is_list(array.type):
                        array = array.flatten()
                    array.to_numpy(zero_copy_only=False)
                rows += batch.num_rows
    assert rows == sum(s.rows for s in shards)
    return time.perf_counter() - start


def loader_epoch(dataset: ArrowSampleDataset, workers: int) -> tuple[float, int]:
    """Seconds and rows for one epoch through make_loader (worker start-up included)."""
    start = time.perf_counter()
    rows = sum(len(batch) for batch in make_loader(dataset, num_workers=workers))
    return time.perf_counter() - start, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    parser.add_argument(
        "--kind",
        choices=[*SAMPLE_KINDS, "all"],
        default="all",
        help="sample kind to test, or all of them (default: %(default)s)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="rows per kind (default: 2M pairwise and pointwise, 300K sequence)",
    )
    parser.add_argument(
        "--files",
        type=int,
        default=8,
        help="Parquet files per kind, like Spark part files (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=4096, help="loader batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="DataLoader workers for the second loader run (default: %(default)s)",
    )
    parser.add_argument(
        "--shuffle-buffer",
        type=int,
        default=16384,
        help="loader shuffle buffer rows per worker (default: %(default)s)",
    )
    parser.add_argument(
        "--negatives",
        type=int,
        default=4,
        help="pairwise negatives per row, N (default: %(default)s)",
    )
    parser.add_argument(
        "--seq-len", type=int, default=50, help="sequence history length, L (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed runs per measurement; the best is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="parent of the temporary folder for the generated files (default: var/bench/loader)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated files instead of deleting them"
    )
    args = parser.parse_args(argv)

    kinds = list(SAMPLE_KINDS) if args.kind == "all" else [args.kind]
    load_before = os.getloadavg()[0]
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.dir))
    table = []
    try:
        for kind in kinds:
            rows = args.rows or DEFAULT_ROWS[kind]
            out = work / kind
            out.mkdir()
            print(f"{kind}: writing {rows:,} rows in {args.files} files ...", file=sys.stderr)
            shards = generate(kind, rows, args.files, args.negatives, args.seq_len, out)
            raw_scan(shards, loader_columns(kind))  # warm the page cache for both sides
            raw_s = min(raw_scan(shards, loader_columns(kind)) for _ in range(args.repeat))
            raw_rate = rows / raw_s
            table.append(
                {"kind": kind, "reader": "raw pyarrow", "workers": 0, "rows": rows,
                 "seconds": round(raw_s, 3), "rows_per_s": round(raw_rate), "ratio": 1.0}
            )  # fmt: skip
            for workers in dict.fromkeys([0, args.workers]):
                best = float("inf")
                for epoch in range(args.repeat):
                    dataset = ArrowSampleDataset(
                        shards, kind, args.batch_size, shuffle_buffer=args.shuffle_buffer, seed=1
                    )
                    dataset.set_epoch(epoch)
                    seconds, seen = loader_epoch(dataset, workers)
                    assert seen == rows, (seen, rows)
                    best = min(best, seconds)
                table.append(
                    {"kind": kind, "reader": "loader", "workers": workers, "rows": rows,
                     "seconds": round(best, 3), "rows_per_s": round(rows / best),
                     "ratio": round(rows / best / raw_rate, 2)}
                )  # fmt: skip
            if not args.keep:
                shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    title = (
        f"Arrow loader benchmark (batch {args.batch_size}, shuffle buffer {args.shuffle_buffer}, "
        f"{args.files} files, N={args.negatives}, L={args.seq_len}, "
        f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)"
    )
    print(format_table(table, title=title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
