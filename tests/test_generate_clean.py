"""Synthetic logs through the real clean stage: the generator's own ledger must reconcile."""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import SparkSession

from recpipe.cli import main
from recpipe.datasets.synthetic import SyntheticSpec, generate_events
from recpipe.stages.clean import run_clean


def test_generated_malformed_rows_land_in_quarantine_exactly(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    spec = SyntheticSpec(
        n_events=20_000,
        malformed_fraction=0.02,
        duplicate_fraction=0.01,
        bot_users=2,
        bot_events_per_day=2_500,
        n_files=3,
        seed=7,
    )
    ledger = generate_events(spec, tmp_path / "raw")
    assert ledger["max_events_per_user_day"] < 2_000 < spec.bot_events_per_day
    config = make_config(
        f"paths.raw_events={tmp_path / 'raw'}", "clean.bot_max_events_per_day=2000"
    )
    manifest = run_clean(spark, config, "2026-11-22")
    assert manifest["rows_in"] == ledger["lines_total"]
    assert manifest["rows_duplicate"] == ledger["duplicates"]
    assert manifest["rows_out"] == ledger["events_valid"] - ledger["bot_events"]
    expected = {reason: n for reason, n in ledger["malformed"].items() if n}
    expected["bot_suspect"] = ledger["bot_events"]
    assert manifest["quarantine_by_reason"] == expected


def test_generate_command_writes_files(tmp_path: Path, capsys) -> None:
    code = main(
        ["generate", "--events", "3000", "--set", f"paths.root={tmp_path}",
         "--set", "datasets.synthetic.n_files=2"]
    )  # fmt: skip
    assert code == 0
    out_dir = tmp_path / "raw" / "synthetic"
    files = sorted(p.name for p in out_dir.glob("part-*.jsonl"))
    assert files == ["part-00000.jsonl", "part-00001.jsonl"]
    printed = json.loads(capsys.readouterr().out)
    # Bytes: bad_encoding lines are Latin-1 on purpose.
    lines = sum(len((out_dir / f).read_bytes().splitlines()) for f in files)
    assert printed["lines_total"] == lines
