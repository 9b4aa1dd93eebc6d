"""Raw input read right: numbers, encodings, per-file CSV headers, Parquet drift, bad files.

Every expected value is computed here from the bytes the test writes (Python's ``decimal``,
``datetime``, ``csv``), never read back from recpipe.
"""

from __future__ import annotations

import codecs
import datetime as dt
import gzip
import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import partition_dir
from pyspark.sql import SparkSession

from recpipe.cli import main
from recpipe.etl.sources import RawInputError
from recpipe.manifest import last_attempt
from recpipe.stages.clean import run_clean
from recpipe.storage import Location

DS = "2026-11-22"
T0 = 1795341600  # 2026-11-22T10:00:00Z
UTC0 = dt.datetime(2026, 11, 22, 10, 0, 0)  # Spark returns UTC wall times (session tz UTC)


def rows(spark: SparkSession, root: Location, table: str) -> list:
    return spark.read.parquet(f"file://{partition_dir(root.local_path(), table, DS)}").collect()


def check_reconciles(manifest: dict) -> None:
    assert manifest["status"] == "ok"
    assert manifest["rows_in"] == (
        manifest["rows_out"] + manifest["rows_quarantined"] + manifest["rows_duplicate"]
    )


def plain(literal: str) -> str:
    """The documented id rule, computed with Python's decimal: plain digits, no -0."""
    text = format(Decimal(literal).normalize(), "f")
    return "0" if text == "-0" else text


def test_json_numeric_ids_float_ts_and_bad_id_types(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    # Each id literal is written as-is (json.dumps would rewrite the numbers).
    numeric_ids = ["42", "42.0", "4.2e1", "1.50", "1.5e-7", "-0.0", "12345678901234567890"]
    lines = [
        f'{{"user_id": {literal}, "item_id": "n{k}", "event_type": "view", "ts": {T0}}}'
        for k, literal in enumerate(numeric_ids)
    ]
    text_ids = ['"42"', '"42.0"', '"007"', '"true"']  # text stays as written
    lines += [
        f'{{"user_id": {literal}, "item_id": "s{k}", "event_type": "view", "ts": {T0}}}'
        for k, literal in enumerate(text_ids)
    ]
    # ts as JSON floats, exponent form, fractional seconds, float milliseconds, string.
    ts_literals = {
        "1795341600.0": 0.0,
        "1.7953416e9": 0.0,
        "1795341600.5": 0.5,
        "1795341600123.0": 0.123,
        '"1795341600.25"': 0.25,
        '"1.795341601E9"': 1.0,
    }
    lines += [
        f'{{"user_id": "t", "item_id": "t{k}", "event_type": "view", "ts": {literal}}}'
        for k, literal in enumerate(ts_literals)
    ]
    bad_types = [
        '{"user_id": {"id": 1}, "item_id": "b", "event_type": "view", "ts": 1795341600}',
        '{"user_id": "u", "item_id": [1, 2], "event_type": "view", "ts": 1795341600}',
        '{"user_id": true, "item_id": "b", "event_type": "view", "ts": 1795341600}',
        '{"user_id": "u", "item_id": false, "event_type": "view", "ts": 1795341600}',
    ]
    raw = tmp_path / "numbers.jsonl"
    raw.write_text("\n".join(lines + bad_types) + "\n")
    config = make_config(f"paths.raw_events={raw}")
    manifest = run_clean(spark, config, DS)
    check_reconciles(manifest)
    assert manifest["quarantine_by_reason"] == {"bad_id_type": len(bad_types)}
    events = rows(spark, config.root, "events")
    users = {r["item_id"]: r["user_id"] for r in events}
    for k, literal in enumerate(numeric_ids):
        assert users[f"n{k}"] == plain(literal), literal
    assert {users[f"n{k}"] for k in range(3)} == {"42"}  # 42, 42.0 and 4.2e1: one user
    for k, literal in enumerate(text_ids):
        assert users[f"s{k}"] == json.loads(literal)
    ts = {r["item_id"]: r["ts"] for r in events if r["user_id"] == "t"}
    for k, offset in enumerate(ts_literals.values()):
        assert ts[f"t{k}"] == UTC0 + dt.timedelta(seconds=offset)
    quarantined = Counter(r["raw"] for r in rows(spark, config.root, "quarantine"))
    assert quarantined == Counter(bad_types)


def test_invalid_utf8_and_utf16_are_quarantined_losslessly(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    def line(user: str, item: str) -> str:
        return json.dumps(
            {"user_id": user, "item_id": item, "event_type": "view", "ts": T0},
            ensure_ascii=False,
        )

    folder = tmp_path / "raw"
    folder.mkdir()
    # café and cafè in Latin-1: E9 and E8 are invalid UTF-8 here; decoding with U+FFFD
    # replacement would make them one user.
    latin = [line("café", "x").encode("latin-1"), line("cafè", "x").encode("latin-1")]
    utf8 = [line("café", "y").encode("utf-8"), line("plain", "z").encode("utf-8")]
    (folder / "mixed.jsonl").write_bytes(b"\n".join(latin + utf8) + b"\n")
    utf16 = (line("u16", "a") + "\n" + line("u16", "b") + "\n").encode("utf-16")
    (folder / "wide.jsonl").write_bytes(utf16)
    config = make_config(f"paths.raw_events={folder}")
    manifest = run_clean(spark, config, DS)
    check_reconciles(manifest)
    # The text reader splits UTF-16 at each 0A byte: one record per 0A, plus the tail after
    # the last one (the newline's 00 byte). Each holds NUL or invalid bytes.
    utf16_records = utf16.split(b"\n")
    assert manifest["quarantine_by_reason"] == {"bad_encoding": len(latin) + len(utf16_records)}
    assert {(r["user_id"], r["item_id"]) for r in rows(spark, config.root, "events")} == {
        ("café", "y"),
        ("plain", "z"),
    }
    # Quarantine is readable by pyarrow (valid UTF-8), and raw gives back the exact bytes.
    table = pq.read_table(partition_dir(config.root.local_path(), "quarantine", DS))
    assert set(table.column("reason").to_pylist()) == {"bad_encoding"}
    restored = Counter(raw.encode("latin-1") for raw in table.column("raw").to_pylist())
    assert restored == Counter(latin + utf16_records)


def write_csv(header: list[str], records: list[list[str]], newline: str) -> bytes:
    """CSV text, fields quoted where they hold a comma or a newline."""
    lines = [header, *records]
    out = []
    for record in lines:
        out.append(",".join(f'"{v}"' if ("," in v or "\n" in v) else v for v in record))
    return (newline.join(out) + newline).encode()


def test_csv_files_map_columns_by_their_own_header(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    folder = tmp_path / "csv"
    folder.mkdir()
    a_header = ["user_id", "item_id", "event_type", "ts"]
    a_rows = [["ua", "ia", "view", str(T0)], ["ua", "ib", "click", str(T0 + 1)]]
    # A UTF-8 byte-order mark before the header must not rename its first column.
    (folder / "a.csv").write_bytes(codecs.BOM_UTF8 + write_csv(a_header, a_rows, "\n"))
    # Swapped and extra columns, a different column count, a note over two lines, CRLF.
    b_header = ["item_id", "ts", "user_id", "event_type", "note"]
    b_rows = [
        ["ib1", str(T0 + 2), "ub", "view", "first line\nsecond line"],
        ["ib2", str(T0 + 3), "ub", "cart", "one, with comma"],
    ]
    (folder / "b.csv").write_bytes(write_csv(b_header, b_rows, "\r\n"))
    c_header = ["ts", "event_type", "item_id", "user_id"]
    c_rows = [[str(T0 + 4), "view", "ic", "uc"]]
    (folder / "c.csv.gz").write_bytes(gzip.compress(write_csv(c_header, c_rows, "\n")))
    latin_row = f"café,il,view,{T0}\n".encode("latin-1")
    (folder / "d.csv").write_bytes(b"user_id,item_id,event_type,ts\n" + latin_row)
    (folder / "e.csv").write_bytes(b"")  # 0 bytes: no rows
    (folder / "f.csv").write_bytes(b"user_id,item_id,event_type,ts\n")  # header only: no rows
    config = make_config(f"paths.raw_events={folder}")
    manifest = run_clean(spark, config, DS)
    check_reconciles(manifest)

    def expected(header: list[str], records: list[list[str]]) -> set[tuple[str, str, str]]:
        return {
            (r[header.index("user_id")], r[header.index("item_id")], r[header.index("ts")])
            for r in records
        }

    want = expected(a_header, a_rows) | expected(b_header, b_rows) | expected(c_header, c_rows)
    events = rows(spark, config.root, "events")
    got = {(r["user_id"], r["item_id"], str(int(r["ts"].timestamp()))) for r in events}
    assert got == want
    assert manifest["rows_in"] == len(a_rows) + len(b_rows) + len(c_rows) + 1
    assert manifest["quarantine_by_reason"] == {"bad_encoding": 1}
    notes = {r["item_id"]: r["extra"].get("note") for r in events if r["user_id"] == "ub"}
    assert notes == {"ib1": "first line\nsecond line", "ib2": "one, with comma"}
    (bad,) = rows(spark, config.root, "quarantine")
    assert bad["reason"] == "bad_encoding"
    fields = {k: v.encode("latin-1") for k, v in json.loads(bad["raw"]).items()}
    assert fields == {
        "user_id": "café".encode("latin-1"),
        "item_id": b"il",
        "event_type": b"view",
        "ts": str(T0).encode(),
    }


def test_parquet_timestamps_numeric_ids_and_column_drift(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    micros = T0 * 1_000_000 + 123_456
    pq.write_table(
        pa.table(
            {
                "user_id": ["p1", "p1"],
                "item_id": ["a", "b"],
                "event_type": ["view", "view"],
                "ts": pa.array([micros, micros + 1], pa.timestamp("us", tz="UTC")),
            }
        ),
        folder / "instant.parquet",
    )
    # Same instant written in another zone and unit: the instant counts, not the wall time.
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([42, 7], pa.int64()),
                "item_id": ["c", "d"],
                "event_type": ["view", "view"],
                "ts": pa.array([T0 * 1000, T0 * 1000 + 1], pa.timestamp("ms", tz="Asia/Tokyo")),
                "device": ["ios", "web"],
            }
        ),
        folder / "tokyo.parquet",
    )
    # Drift: ids as doubles, ts as epoch seconds, no item_id column at all.
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([42.0, 2.5], pa.float64()),
                "event_type": ["view", "view"],
                "ts": pa.array([T0, T0], pa.int64()),
            }
        ),
        folder / "drift.parquet",
    )
    # A zone-less timestamp is a wall time, not an instant: bad_ts, like ISO text without zone.
    pq.write_table(
        pa.table(
            {
                "user_id": ["n"],
                "item_id": ["e"],
                "event_type": ["view"],
                "ts": pa.array([T0 * 1_000_000], pa.timestamp("us")),
            }
        ),
        folder / "naive.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([42.0], pa.float64()),
                "item_id": ["f"],
                "event_type": ["view"],
                "ts": pa.array([T0], pa.int64()),
            }
        ),
        folder / "doubles.parquet",
    )
    config = make_config(f"paths.raw_events={folder}")
    manifest = run_clean(spark, config, DS)
    check_reconciles(manifest)
    assert manifest["rows_in"] == 8
    assert manifest["quarantine_by_reason"] == {"missing_item_id": 2, "bad_ts": 1}
    events = {r["item_id"]: r for r in rows(spark, config.root, "events")}
    assert set(events) == {"a", "b", "c", "d", "f"}
    assert events["a"]["ts"] == UTC0 + dt.timedelta(microseconds=123_456)
    assert events["b"]["ts"] == UTC0 + dt.timedelta(microseconds=123_457)
    assert events["c"]["ts"] == UTC0
    assert events["d"]["ts"] == UTC0 + dt.timedelta(milliseconds=1)
    assert events["c"]["user_id"] == events["f"]["user_id"] == "42"  # int64 42, double 42.0
    assert events["c"]["extra"] == {"device": "ios"}
    drift = {json.loads(r["raw"])["user_id"] for r in rows(spark, config.root, "quarantine")}
    assert drift == {42.0, 2.5, "n"}


def test_parquet_files_with_compatible_drift_merge_by_name(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    base = {"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"], "ts": [T0]}
    pq.write_table(pa.table(base), folder / "a.parquet")
    reordered = {"ts": [T0 + 1], "campaign": ["x"], "event_type": ["view"], "user_id": ["u2"]}
    pq.write_table(pa.table(reordered), folder / "b.parquet")
    config = make_config(f"paths.raw_events={folder}")
    manifest = run_clean(spark, config, DS)
    check_reconciles(manifest)
    assert manifest["quarantine_by_reason"] == {"missing_item_id": 1}
    (event,) = rows(spark, config.root, "events")
    # A column another file has is null here, as a null field is in any format.
    assert (event["user_id"], event["item_id"], event["extra"]) == ("u1", "i1", {"campaign": None})
    (bad,) = rows(spark, config.root, "quarantine")
    assert json.loads(bad["raw"])["campaign"] == "x"


def _truncated_gzip(tmp_path: Path) -> Path:
    lines = "".join(
        json.dumps({"user_id": f"u{k}", "item_id": "i", "event_type": "view", "ts": T0}) + "\n"
        for k in range(5000)
    )
    data = gzip.compress(lines.encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])  # real gzip bytes, cut short
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the error must contain besides the file's name)."""
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(b'{"user_id": "u"}\n')
    empty_parquet = tmp_path / "empty.parquet"
    empty_parquet.write_bytes(b"")
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"user_id": ["u"] * 100, "ts": list(range(100))}), whole)
    cut_parquet = tmp_path / "cut.parquet"
    cut_parquet.write_bytes(whole.read_bytes()[:200])
    whole.unlink()
    duplicate = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array(["a"]), pa.array(["b"])], names=["user_id"] * 2), duplicate)
    wide_csv = tmp_path / "wide.csv"
    wide_csv.write_bytes(f"user_id,item_id,event_type,ts\nu,i,view,{T0}\n".encode("utf-16"))
    cut_csv = tmp_path / "cut.csv.gz"
    cut_csv.write_bytes(gzip.compress(b"user_id,item_id,event_type,ts\n" * 200)[:30])
    return {
        "truncated gzip": (_truncated_gzip(tmp_path), "EOFException"),
        "fake gzip": (fake, "not a gzip file"),
        "0-byte parquet": (empty_parquet, "0-byte"),
        "cut parquet": (cut_parquet, "cannot read"),
        "duplicate columns": (duplicate, "user_id"),
        "utf-16 csv": (wide_csv, "UTF-16"),
        "truncated csv gzip": (cut_csv, "cannot read"),
    }


def test_unreadable_files_are_one_line_errors_and_publish_nothing(
    spark: SparkSession, make_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps({"user_id": "keep", "item_id": "i", "event_type": "view", "ts": T0}) + "\n"
    )
    config = make_config(f"paths.raw_events={good}")
    assert run_clean(spark, config, DS)["rows_out"] == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, (path, detail) in _bad_files(bad).items():
        # Each bad file beside a good one: the whole input is refused, naming that file.
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        (folder / "good.jsonl").write_bytes(good.read_bytes())
        target = folder / path.name
        target.write_bytes(path.read_bytes())
        with pytest.raises(RawInputError) as caught:
            run_clean(spark, make_config(f"paths.raw_events={folder}"), DS)
        message = str(caught.value)
        assert "\n" not in message, name
        assert path.name in message and detail in message, (name, message)
        # The day published before is untouched.
        assert [r["user_id"] for r in rows(spark, config.root, "events")] == ["keep"], name
    # Through the CLI: one line on stderr, exit 1.
    folder = tmp_path / "truncated_gzip"
    code = main(["clean", "--ds", DS, "--set", f"paths.root={config.root}",
                 "--set", f"paths.raw_events={folder}"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.count("\n") == 0 and "cut.jsonl.gz" in err and err.startswith("recpipe clean:")
    # The failure is recorded beside the manifest of the day still served.
    manifest_file = config.root.local_path() / "manifests" / "clean" / f"ds={DS}.json"
    served = json.loads(manifest_file.read_text())
    assert served["status"] == "ok" and served["rows_out"] == 1
    failed = last_attempt(config.root, "clean", DS)
    assert failed is not None and failed["status"] == "failed"
    assert "cut.jsonl.gz" in failed["error"]


def test_empty_text_files_contribute_no_rows(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "empty.jsonl.gz").write_bytes(gzip.compress(b""))
    (folder / "one.jsonl").write_text(
        json.dumps({"user_id": "u", "item_id": "i", "event_type": "view", "ts": T0}) + "\n"
    )
    manifest = run_clean(spark, make_config(f"paths.raw_events={folder}"), DS)
    check_reconciles(manifest)
    assert (manifest["rows_in"], manifest["rows_out"]) == (1, 1)
    only_empty = tmp_path / "only_empty"
    only_empty.mkdir()
    (only_empty / "a.csv").write_bytes(b"")
    (only_empty / "b.jsonl").write_bytes(b"")
    other_root = f"paths.root={tmp_path / 'other'}"  # no earlier day to protect there
    manifest = run_clean(spark, make_config(f"paths.raw_events={only_empty}", other_root), DS)
    check_reconciles(manifest)
    assert manifest["rows_in"] == 0
