"""ETL benchmark: clean + sessionize on generated 1M and 5M events.

Prints events/s per stage and size, the 5M/1M time ratio (linear scaling gives 5.0), and the
ratio of clean's time to a named reference run in the same process: Spark reading the same
JSON lines with a fixed all-string schema and writing them to Parquet with no validation,
the floor any clean stage pays. The reference runs twice and the second (warm JVM) time is
the one compared; the first is printed too (the cold one flatters clean by about 2x).

A second reference keeps what the raw contract keeps and nothing more: each line parsed
once into a map of every field (``from_json`` to ``map<string,string>``, no typing, no
checks), the known fields as columns and the rest as the ``extra`` map, written to Parquet.
The schema'd reader skips fields outside its schema while parsing, so this second one is the
cost of keeping them with one parse per line; ``clean/keep_all`` is clean against it.

    .venv/bin/python bench/etl.py [--sizes 1000000 5000000] [--root var/bench]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pyspark.sql import functions as F

from recpipe import storage
from recpipe.config import load_config
from recpipe.console import format_table
from recpipe.datasets.synthetic import SyntheticSpec, generate_events
from recpipe.etl.sources import EVENTS_CONTRACT, _known_and_extra
from recpipe.schema import KNOWN_FIELDS
from recpipe.spark import get_spark
from recpipe.stages.clean import run_clean
from recpipe.stages.sessionize import run_sessionize
from recpipe.stages.vocab import run_vocab
from recpipe.storage import Location, as_location

DS = "2026-11-22"


def reference_scan(spark, raw: Location, out: Location) -> float:
    """Seconds for schema'd JSON read -> Parquet write of the same files, no checks."""
    schema = ", ".join(f"{name} string" for name in KNOWN_FIELDS)
    start = time.perf_counter()
    files = [p.uri for p in storage.glob(raw, "part-*.jsonl")]
    spark.read.schema(schema).json(files).write.mode("overwrite").parquet(out.uri)
    return time.perf_counter() - start


def keep_all_scan(spark, raw: Location, out: Location) -> float:
    """Seconds for text read -> one map parse per line -> known columns + ``extra`` -> Parquet."""
    start = time.perf_counter()
    files = [p.uri for p in storage.glob(raw, "part-*.jsonl")]
    fields = spark.read.text(files).select(
        F.from_json("value", "map<string,string>").alias("fields")
    )
    # The same split into known columns and ``extra`` as clean's CSV reader.
    fields.select(*_known_and_extra(F.col("fields"), EVENTS_CONTRACT)).write.mode(
        "overwrite"
    ).parquet(out.uri)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--root", type=Path, default=Path("var/bench"))
    args = parser.parse_args(argv)
    # The bench's own folder on this machine; raw input and each size's state go through
    # recpipe.storage like any paths.root.
    root = args.root.resolve()
    base = load_config(None, [f"paths.root={root}/spark"])
    spark = get_spark(base)
    rows = []
    for size in args.sizes:
        raw = as_location(root) / f"raw-{size}"
        if not storage.is_file(raw / "_generation.json"):
            print(f"generating {size:,} events ...", file=sys.stderr)
            generate_events(SyntheticSpec(n_events=size, n_files=8, seed=1), raw)
        state = as_location(root) / f"state-{size}"
        storage.remove_tree(state)
        config = load_config(None, [f"paths.root={state}", f"paths.raw_events={raw}"])
        cold_s = reference_scan(spark, raw, state / "reference")
        ref_s = reference_scan(spark, raw, state / "reference")
        keep_all_s = keep_all_scan(spark, raw, state / "keep_all")
        clean = run_clean(spark, config, DS)
        vocab = run_vocab(spark, config, DS)
        sessions = run_sessionize(spark, config, DS)
        rows.append(
            {
                "events_in": clean["rows_in"],
                "reference_cold_s": round(cold_s, 1),
                "reference_s": round(ref_s, 1),
                "clean_s": clean["seconds"],
                "clean_ev_per_s": round(clean["rows_in"] / clean["seconds"]),
                "keep_all_s": round(keep_all_s, 1),
                "clean/reference": round(clean["seconds"] / ref_s, 2),
                "keep_all/reference": round(keep_all_s / ref_s, 2),
                "clean/keep_all": round(clean["seconds"] / keep_all_s, 2),
                "vocab_s": vocab["seconds"],
                "sessionize_s": sessions["seconds"],
                "sessionize_ev_per_s": round(sessions["rows_in"] / sessions["seconds"]),
                "sessions": sessions["sessions"],
            }
        )
    print(format_table(rows, title=f"ETL benchmark ({spark.sparkContext.master}, ds={DS})"))
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        work = large["events_in"] / small["events_in"]
        for stage in ("clean_s", "sessionize_s"):
            ratio = large[stage] / small[stage]
            print(f"{stage[:-2]}: {large['events_in']:,}/{small['events_in']:,} events "
                  f"= {work:.1f}x work took {ratio:.2f}x time")  # fmt: skip
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
