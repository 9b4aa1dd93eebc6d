"""Recommendation lookup benchmark: one user's rows from a published partition, no JVM.

Generates ``--users`` users x ``--items`` recommendations with numpy/pyarrow, publishes them
through ``warehouse.publish_partition`` (the production write path), then times
``query.lookup_recs`` for random users: the first call of a fresh process and the first call
in this process are reported apart from the warm p50/p95/max. The named reference is a
``pyarrow.parquet.read_table`` of the whole partition in the same process (median of 3).

    .venv/bin/python bench/recs_lookup.py [--users 1000000] [--root var/bench-recs] [--reuse]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recpipe import storage
from recpipe.config import Config, load_config
from recpipe.console import format_table
from recpipe.query import UnknownUserError, lookup_recs
from recpipe.storage import Location, as_location
from recpipe.warehouse import RECOMMENDATIONS, partition_location, publish_partition, read_pointer

DS = "2026-11-22"
MODEL = "bench"
N_ITEMS = 100_000

COLD_LOOKUP = """
import json, sys, time
start = time.perf_counter()
from recpipe.config import load_config
from recpipe.query import lookup_recs
imported = time.perf_counter()
config = load_config(None, [f"paths.root={sys.argv[1]}"])
lookup_recs(config, sys.argv[2], model=sys.argv[3], ds=sys.argv[4])
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "lookup_s": done - imported}))
"""


def user_ids(indexes: np.ndarray) -> pa.Array:
    """``u0000042``-style ids for integer indexes."""
    digits = pc.utf8_lpad(pc.cast(pa.array(indexes), pa.string()), width=7, padding="0")
    return pc.binary_join_element_wise("u", digits, "")


def generate(path: Location, users: int, items: int, seed: int = 0) -> None:
    """Write ``users`` x ``items`` recommendation rows, users in random order, to ``path``."""
    rng = np.random.default_rng(seed)
    order = np.repeat(rng.permutation(users), items)
    rank = np.tile(np.arange(1, items + 1, dtype=np.int32), users)
    item = rng.integers(0, N_ITEMS, size=users * items)
    digits = pc.utf8_lpad(pc.cast(pa.array(item), pa.string()), width=6, padding="0")
    table = pa.table(
        {
            "user_id": user_ids(order),
            "item_id": pc.binary_join_element_wise("i", digits, ""),
            "rank": rank,
            "score": (1.0 / rank + rng.random(users * items) * 1e-3).astype(np.float64),
            "generated_at": pa.array(
                np.full(users * items, np.datetime64("2026-11-22T06:00:00", "us")),
                pa.timestamp("us", tz="UTC"),
            ),
            "source": pa.array(["bench"] * (users * items)),
        }
    )
    storage.makedirs(path.parent)  # pyarrow's local writer creates no parent folders
    fs, fs_path = storage.arrow_path(path)
    pq.write_table(table, fs_path, filesystem=fs)


def publish(config: Config, source: Location) -> float:
    """Publish ``source`` as partition (DS, MODEL) through Spark; seconds taken."""
    from recpipe.spark import get_spark

    spark = get_spark(config)
    start = time.perf_counter()
    publish_partition(spark, config, RECOMMENDATIONS, spark.read.parquet(source.uri), DS, MODEL)
    seconds = time.perf_counter() - start
    spark.stop()
    return seconds


def row_groups(path: Location) -> int:
    """Row groups of one Parquet file, from its footer."""
    with storage.open_input(path) as handle:
        return int(pq.ParquetFile(handle).metadata.num_row_groups)


def layout(folder: Location) -> dict[str, object]:
    """Files, row groups and bytes of a published version folder."""
    files = [e for e in storage.list_dir(folder) if e.name.startswith("part-")
             and e.name.endswith(".parquet")]  # fmt: skip
    groups = [row_groups(e.location) for e in files]
    size = sum(e.size for e in files)
    return {"files": len(files), "row_groups": sum(groups), "mb": round(size / 2**20, 1)}


def timed_lookups(config: Config, users: list[str]) -> list[float]:
    """Milliseconds per ``lookup_recs`` call, one per user, unknown users included."""
    times = []
    for user in users:
        start = time.perf_counter()
        with contextlib.suppress(UnknownUserError):
            lookup_recs(config, user, model=MODEL, ds=DS)
        times.append((time.perf_counter() - start) * 1000)
    return times


def cold_process(root: Path, user: str) -> dict[str, float]:
    """A fresh interpreter doing one lookup: import and lookup seconds, and its wall time."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", COLD_LOOKUP, str(root), user, MODEL, DS],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def read_table_ms(folder: Location) -> float:
    """Milliseconds for the reference: ``pyarrow.parquet.read_table`` of the whole folder."""
    fs, path = storage.arrow_path(folder)
    start = time.perf_counter()
    pq.read_table(path, filesystem=fs)
    return (time.perf_counter() - start) * 1000


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``."""
    return float(np.quantile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--lookups", type=int, default=200, help="warm lookups timed")
    parser.add_argument("--root", type=Path, default=Path("var/bench-recs"))
    parser.add_argument("--reuse", action="store_true", help="reuse a published partition")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    config = load_config(None, [f"paths.root={root}"])
    rows = args.users * args.items
    pointer = read_pointer(config, RECOMMENDATIONS, DS, MODEL)
    publish_s = None
    if not (args.reuse and pointer and pointer["rows"] == rows):
        # The bench's input lives under its paths.root: reached through storage like any state.
        source = as_location(root) / "input" / f"recs-{args.users}x{args.items}.parquet"
        if not storage.is_file(source):
            print(f"generating {rows:,} rows ...", file=sys.stderr)
            generate(source, args.users, args.items)
        publish_s = publish(config, source)
    folder = partition_location(config, RECOMMENDATIONS, DS, MODEL)
    rng = np.random.default_rng(1)
    users = user_ids(rng.integers(0, args.users, size=args.lookups + 1)).to_pylist()
    cold = cold_process(root, users[0])
    first_ms, *warm = timed_lookups(config, users)
    misses = timed_lookups(config, [f"x{i}" for i in range(20)])
    full_ms = statistics.median(read_table_ms(folder) for _ in range(3))
    p50 = statistics.median(warm)
    summary = {
        "rows": rows,
        **layout(folder),
        "publish_s": None if publish_s is None else round(publish_s, 1),
        "cold_process_s": round(cold["process_s"], 2),
        "cold_import_ms": round(cold["import_s"] * 1000),
        "cold_lookup_ms": round(cold["lookup_s"] * 1000),
        "first_call_ms": round(first_ms, 1),
    }
    latency = {
        "lookups": len(warm),
        "p50_ms": round(p50, 1),
        "p95_ms": round(percentile(warm, 0.95), 1),
        "max_ms": round(max(warm), 1),
        "unknown_p50_ms": round(statistics.median(misses), 1),
        "read_table_ms": round(full_ms, 1),
        "read_table/p50": round(full_ms / p50, 1),
    }
    print(format_table([summary], title=f"recommendations partition ({folder})"))
    print()
    print(format_table([latency], title="lookup_recs latency (warm, this process)"))
    print(f"p50 {p50:.1f} ms vs target 1000 ms: {'ok' if p50 < 1000 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
