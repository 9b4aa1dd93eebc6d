"""The catalog stage on hand-written corpora: each reason code, conflicts, exact reconciliation,
the three formats, idempotent re-runs, and titles in `recpipe recs`.

Expected rows are computed here from the records the test writes (plain Python: json, csv,
Counter), never read back from recpipe.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from recpipe.cli import main
from recpipe.config import Config, ConfigError
from recpipe.etl.sources import RawInputError
from recpipe.manifest import last_attempt
from recpipe.pipeline import StepContext, step
from recpipe.query import format_recs, lookup_recs
from recpipe.stages.catalog import run_catalog
from recpipe.warehouse import RECOMMENDATIONS, publish_partition

DS = "2026-11-22"
LONG_ID = "i" * 129  # over clean.max_id_length (128)

# (JSON line, expected reason; None: valid). Conflicts are marked too and re-derived below.
ITEM_LINES: list[tuple[str, str | None]] = [
    ('{"item_id": "i1", "title": "Toy Story", "genres": ["Animation", "Comedy"], "year": 1995}',
     None),
    ('{"item_id": "i1", "title": "Toy Story", "genres": ["Animation", "Comedy"], "year": 1995}',
     None),  # an exact copy: one row, one duplicate
    ('{"item_id": 42, "title": "A numeric id"}', None),  # the id "42", as events render it
    ('{"item_id": " i2 ", "title": "  Spaced out  "}', None),  # id and title trimmed
    ('{"item_id": "i3", "brand": "acme", "price": "9.5"}', None),  # no title
    ('{"price": "9.5", "item_id": "i3", "brand": "acme"}', None),  # same record, fields reordered
    ('{"item_id": "c1", "title": "Version A"}', "conflicting_record"),
    ('{"item_id": "c1", "title": "Version B"}', "conflicting_record"),
    ('{"item_id": "c1", "title": "Version A"}', "conflicting_record"),  # a copy of a conflict
    ("", "empty_record"),
    ('{"item_id": "i9", "title"', "malformed_record"),
    ('["i9", "title"]', "not_an_object"),
    ('{"title": "No id"}', "missing_item_id"),
    ('{"item_id": "   ", "title": "Blank id"}', "missing_item_id"),
    ('{"item_id": {"nested": 1}, "title": "Object id"}', "bad_id_type"),
    (json.dumps({"item_id": LONG_ID, "title": "Long id"}), "id_too_long"),
]  # fmt: skip


def attribute_text(value: Any) -> str:
    """How an attribute reads in the table: text as written, numbers as JSON text, arrays and
    objects as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def expected_items(lines: list[tuple[str, str | None]]) -> tuple[dict, Counter, int]:
    """(rows by id, quarantine reasons, duplicates) for the valid lines, by plain Python."""
    versions: dict[str, Counter] = {}
    for line, reason in lines:
        if reason not in (None, "conflicting_record"):
            continue
        record = json.loads(line)
        item = str(record.pop("item_id")).strip()
        title = record.pop("title", None)
        title = title.strip() or None if title is not None else None
        attributes = tuple(sorted((k, attribute_text(v)) for k, v in record.items()))
        versions.setdefault(item, Counter())[(title, attributes)] += 1
    rows, reasons, duplicates = {}, Counter(), 0
    for item, counts in versions.items():
        if len(counts) > 1:
            reasons["conflicting_record"] += sum(counts.values())
            continue
        (((title, attributes), copies),) = counts.items()
        rows[item] = {"title": title, "attributes": dict(attributes)}
        duplicates += copies - 1
    for _, reason in lines:
        if reason not in (None, "conflicting_record"):
            reasons[reason] += 1
    return rows, reasons, duplicates


def published(root: Path, table: str, partition: str = f"ds={DS}") -> list[dict[str, Any]]:
    """Rows of a committed catalog partition, found through the manifest, read with pyarrow."""
    manifest = json.loads((root / "manifests" / "catalog" / f"ds={DS}.json").read_text())
    assert manifest["status"] == "ok", manifest
    folder = root / manifest["outputs"][table][partition]["path"]
    rows = pq.read_table(folder).to_pylist()
    for row in rows:
        if "attributes" in row:
            row["attributes"] = dict(row["attributes"])
    return rows


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """The four reference inputs, one per format where the format matters."""
    raw = tmp_path / "raw"
    items = raw / "items"
    items.mkdir(parents=True)
    (items / "a.jsonl").write_text("\n".join(line for line, _ in ITEM_LINES) + "\n")
    users = raw / "users"
    users.mkdir()
    with (users / "profiles.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "age", "region"])
        writer.writerow(["u1", "34", "north"])
        writer.writerow(["u2", "51", "south"])
        writer.writerow(["u2", "51", "south"])  # an exact copy
        writer.writerow(["", "20", "east"])  # missing_user_id
    (users / "bad.csv").write_text('user_id,age\n"u3,40\n')  # unclosed quote: malformed
    kg = raw / "kg"
    kg.mkdir()
    (kg / "triples.csv").write_text(
        "head,relation,tail\n"
        "m.1,film.actor,m.9\n"
        "m.1,film.actor,m.9\n"  # duplicate triple
        "m.1,film.genre,m.7\n"
        "m.2,,m.7\n"  # missing_relation
    )
    links = raw / "links"
    links.mkdir()
    pq.write_table(
        pa.table(
            {
                "item_id": pa.array([1, 42, 42, 7], pa.int64()),  # Parquet numbers: plain ids
                "entity": pa.array(["m.1", "m.2", "m.3", None]),  # 42 conflicts; 7 has none
            }
        ),
        links / "links.parquet",
    )
    return {"items": items, "users": users, "kg": kg, "links": links}


def catalog_config(make_config, inputs: dict[str, Path], *extra: str) -> Config:
    return make_config(*(f"paths.raw_{name}={path}" for name, path in inputs.items()), *extra)


def test_every_input_is_cleaned_and_reconciles_exactly(
    spark: SparkSession, make_config, inputs: dict[str, Path]
) -> None:
    config = catalog_config(make_config, inputs)
    manifest = run_catalog(spark, config, DS)
    root = config.root.local_path()

    rows, reasons, duplicates = expected_items(ITEM_LINES)
    items = {row["item_id"]: row for row in published(root, "items")}
    assert {item: {"title": r["title"], "attributes": r["attributes"]} for item, r in
            items.items()} == rows  # fmt: skip
    assert items["i1"]["attributes"]["genres"] == '["Animation","Comedy"]'
    counts = manifest["inputs"]["items"]
    assert counts["rows_in"] == len(ITEM_LINES)
    assert counts["rows_out"] == len(rows)
    assert counts["rows_duplicate"] == duplicates == 2
    assert counts["quarantine_by_reason"] == dict(reasons)
    quarantine = published(root, "catalog_quarantine", f"ds={DS}/input=items")
    assert Counter(row["reason"] for row in quarantine) == reasons
    # The quarantine keeps each rejected line's text as written.
    assert sorted(row["raw"] for row in quarantine) == sorted(
        line for line, reason in ITEM_LINES if reason
    )

    users = {row["user_id"]: row["attributes"] for row in published(root, "users")}
    assert users == {"u1": {"age": "34", "region": "north"}, "u2": {"age": "51", "region": "south"}}
    assert manifest["inputs"]["users"]["quarantine_by_reason"] == {
        "malformed_record": 1, "missing_user_id": 1,
    }  # fmt: skip
    triples = {(r["head"], r["relation"], r["tail"]) for r in published(root, "kg_triples")}
    assert triples == {("m.1", "film.actor", "m.9"), ("m.1", "film.genre", "m.7")}
    assert manifest["inputs"]["kg"]["rows_duplicate"] == 1
    assert manifest["inputs"]["kg"]["quarantine_by_reason"] == {"missing_relation": 1}
    links = {row["item_id"]: row["entity"] for row in published(root, "item_entities")}
    assert links == {"1": "m.1"}
    assert manifest["inputs"]["links"]["quarantine_by_reason"] == {
        "conflicting_record": 2, "missing_entity": 1,
    }  # fmt: skip
    for info in manifest["inputs"].values():
        assert info["rows_in"] == (
            info["rows_out"] + info["rows_quarantined"] + info["rows_duplicate"]
        )

    # A re-run of the day replaces it with the same rows and counts.
    again = run_catalog(spark, config, DS)
    assert again["inputs"] == manifest["inputs"]
    assert {row["item_id"]: row for row in published(root, "items")}.keys() == items.keys()


def test_no_input_set_is_a_note_and_a_direct_run_names_the_keys(
    spark: SparkSession, make_config, capsys
) -> None:
    config = make_config()
    result = step("catalog").run(StepContext(config, DS))
    assert result.manifests == []
    assert result.notes and "paths.raw_items" in result.notes[0]
    with pytest.raises(ConfigError, match=r"paths\.raw_items, paths\.raw_users, paths\.raw_kg"):
        run_catalog(spark, config, DS)
    assert main(["catalog", "--ds", DS, "--set", f"paths.root={config.root}"]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_unreadable_input_fails_in_one_line_and_publishes_nothing(
    spark: SparkSession, make_config, inputs: dict[str, Path]
) -> None:
    (inputs["links"] / "empty.parquet").write_bytes(b"")
    config = catalog_config(make_config, inputs)
    with pytest.raises(RawInputError, match=r"^paths.raw_links: .*empty.parquet is a 0-byte"):
        run_catalog(spark, config, DS)
    root = config.root.local_path()
    assert not (root / "manifests" / "catalog" / f"ds={DS}.json").exists()
    assert last_attempt(config.root, "catalog", DS)["status"] == "failed"


def test_recs_show_titles_and_profile_from_the_catalogue_of_their_day(
    spark: SparkSession, make_config, inputs: dict[str, Path], capsys
) -> None:
    database = f"catalog_{uuid.uuid4().hex[:12]}"
    config = catalog_config(make_config, inputs, f"warehouse.database={database}")
    run_catalog(spark, config, DS)
    # A later catalogue renames i1: a list of DS still shows the title of its own day.
    later = inputs["items"].parent / "items-later"
    later.mkdir()
    (later / "b.jsonl").write_text('{"item_id": "i1", "title": "Renamed"}\n')
    run_catalog(spark, make_config(f"paths.raw_items={later}"), "2026-11-30")
    generated = dt.datetime(2026, 11, 22, 6, 30)
    schema = "user_id string, item_id string, rank int, score double, generated_at timestamp, " \
        "source string"  # fmt: skip
    recs = [("u1", "i1", 1, 0.9, generated, "als"), ("u1", "zz", 2, 0.5, generated, "als")]
    publish_partition(spark, config, RECOMMENDATIONS, spark.createDataFrame(recs, schema), DS,
                      "als")  # fmt: skip

    rows = lookup_recs(config, "u1")
    assert [(r["item_id"], r["title"]) for r in rows] == [("i1", "Toy Story"), ("zz", None)]
    assert rows[0]["profile"] == {"age": "34", "region": "north"}
    text = format_recs(rows, "table")
    assert text.splitlines()[0].startswith("recommendations for user u1 (age 34, region north)")
    assert "title" in text.splitlines()[1] and "Toy Story" in text
    where = ["--set", f"paths.root={config.root}", "--set", f"warehouse.database={database}"]
    assert main(["recs", "--user", "u1", *where]) == 0
    assert "Toy Story" in capsys.readouterr().out


def test_multi_valued_attributes_read_the_same_in_spark_and_python(spark: SparkSession) -> None:
    from pyspark.sql import functions as F

    from recpipe.catalogue import values_of
    from recpipe.catalogue_mix import attribute_values

    texts = ['["A", "B"]', "A|B", " A | B ", "A", "", None, "[]", '["x|y"]', '{"a": 1}', "|A||"]
    frame = spark.createDataFrame([(t,) for t in texts], "text string")
    got = frame.select(F.coalesce(attribute_values(F.col("text")), F.array()).alias("v")).collect()
    assert [row["v"] for row in got] == [values_of(t) for t in texts]
    assert values_of('["A", "B"]') == ["A", "B"] and values_of("A|B") == ["A", "B"]


def test_mix_shares_and_distance() -> None:
    from recpipe.report.mix import mix_rows, shares, total_variation

    assert shares({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    assert total_variation({"a": 0.25, "b": 0.75}, {"a": 1.0}) == pytest.approx(0.75)
    assert total_variation({"a": 0.5, "b": 0.5}, {"b": 0.5, "a": 0.5}) == 0
    mix = {"attribute": "genres", "recommended": {"a": 3, "b": 1}, "history": {"a": 1, "c": 1}}
    (row,) = mix_rows({"als": mix})
    assert row["genres recommended"] == 2 and row["largest share"] == "a 75.0%"
    assert row["distance to history mix (TV)"] == pytest.approx(0.5 * (0.25 + 0.25 + 0.5))
