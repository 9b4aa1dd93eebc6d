"""The features stage on a hand-written catalogue: every kind against plain-Python expectations,
stable value indexes across days, statistics, config errors, the catalogue as of the day.

Expected columns are computed here from the records the test writes (re, zlib, numpy), with
the item and user indexes read from the vocab stage's table; never from recpipe's features.
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pytest
from pyspark.sql import SparkSession

from recpipe.catalogue import snapshot_ds
from recpipe.commands import feature_rows
from recpipe.commit import current_record, current_version
from recpipe.config import Config, ConfigError
from recpipe.errors import MissingInputError
from recpipe.layout import FEATURE_VOCAB, ITEM_FEATURES, USER_FEATURES, VOCAB_ITEMS, VOCAB_USERS
from recpipe.manifest import last_attempt
from recpipe.pipeline import StepContext, run_steps, step

DS1, DS2 = "2026-11-22", "2026-11-23"
OOV = 1
ITEMS_DAY1 = [
    {"item_id": "i1", "title": "Toy Story", "genres": "Animation|Comedy", "year": "1995",
     "brand": "pixar"},
    {"item_id": "i2", "title": "Heat", "genres": ["Action", " Crime", "Thriller"], "year": 1995,
     "brand": "warner"},
    {"item_id": "i3", "title": "Comedy Gold! 2", "genres": "Comedy", "year": "abc",
     "brand": "warner"},
    {"item_id": "i4", "genres": "Comedy | Comedy|Drama", "year": "2001", "brand": "rare"},
    {"item_id": "i5", "title": "Café Society", "genres": "", "year": "1980", "brand": "pixar"},
    {"item_id": "c9", "title": "Never watched", "genres": "Drama", "brand": "pixar"},
]  # fmt: skip
USERS_DAY1 = [
    {"user_id": "u1", "age": "34", "gender": "F"},
    {"user_id": "u2", "age": "19", "gender": "M"},
    {"user_id": "u3", "age": "56", "gender": "M"},
    {"user_id": "u4", "gender": "F"},
]
# Day 2 renames Toy Story and adds an item with a new genre.
ITEMS_DAY2 = [
    {**ITEMS_DAY1[0], "title": "Redux: Toy Story"},
    *ITEMS_DAY1[1:],
    {"item_id": "i10", "title": "Heat 2", "genres": "Horror|Comedy", "brand": "warner"},
]
ITEM_SPECS = {
    "genres": "{kind: multi, max_values: 2}",
    "brand": "{kind: categorical, min_count: 2}",
    "era": "{kind: numeric, field: year, transform: bucketize, buckets: 3}",
    "year": "{kind: numeric}",
    "words": "{kind: text, field: title, hash_buckets: 50, max_tokens: 2}",
}
USER_SPECS = {"gender": "{kind: categorical}", "age": "{kind: numeric, transform: raw}"}


def _events(ds: str, items: list[str]) -> list[dict[str, str]]:
    users = ["u1", "u2", "u3", "u4", "u5"]  # u5 has no profile
    return [
        {"user_id": users[k % len(users)], "item_id": item, "event_type": "view",
         "ts": f"{ds}T0{k % 10}:00:00Z"}
        for k, item in enumerate(items * 2)
    ]  # fmt: skip


def _write(folder: Path, rows: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _day_config(make_config, raw: Path, ds: str, catalogue: list[dict], **specs: dict) -> Config:
    events = ["i1", "i2", "i3", "i4", "i5", "i6", "i7"] + (["i10"] if ds == DS2 else [])
    overrides = [
        f"paths.raw_events={_write(raw / ds / 'events', _events(ds, events))}",
        f"paths.raw_items={_write(raw / ds / 'items', catalogue)}",
        f"paths.raw_users={_write(raw / ds / 'users', USERS_DAY1)}",
    ]
    for entity, chosen in specs.items():
        overrides += [f"features.{entity}.{name}={spec}" for name, spec in chosen.items()]
    return make_config(*overrides)


def _table(config: Config, table: str, ds: str) -> list[dict[str, Any]]:
    version = current_version(config.root, table, {"ds": ds})
    return pads.dataset(version.local_path(), format="parquet").to_table().to_pylist()


def _vocabulary(values_by_key: dict[str, list[str]], min_count: int, start: int,
                known: dict[str, int]) -> dict[str, int]:  # fmt: skip
    """``known`` plus today's values on ``min_count`` rows or more, numbered after the largest
    index in order of (rows desc, value)."""
    rows = Counter(v for values in values_by_key.values() for v in set(values))
    fresh = sorted((v for v, n in rows.items() if n >= min_count and v not in known),
                   key=lambda v: (-rows[v], v))  # fmt: skip
    first = max([start - 1, *known.values()]) + 1
    return {**known, **{v: first + k for k, v in enumerate(fresh)}}


def _padded(indexes: list[int], size: int) -> list[int]:
    return (indexes[:size] + [0] * size)[:size]


def _expected_items(config: Config, ds: str, catalogue: list[dict], vocab: dict) -> dict:
    """{item_id: row} the way the specs above define each column, in plain Python."""
    idx = {r["item_id"]: r["item_idx"] for r in _table(config, VOCAB_ITEMS, ds)}
    rows = [r for r in catalogue if r["item_id"] in idx]
    genres = {}
    for r in rows:
        listed = r.get("genres", "")  # a JSON array, or text separated by |
        parts = [p.strip() for p in (listed if isinstance(listed, list) else listed.split("|"))]
        parts = [p for p in parts if p]
        genres[r["item_id"]] = list(dict.fromkeys(parts))
    vocab["genres"] = _vocabulary(genres, 1, 2, vocab.get("genres", {}))
    brands = {r["item_id"]: [r["brand"]] for r in rows if r.get("brand")}
    vocab["brand"] = _vocabulary(brands, 2, 2, vocab.get("brand", {}))
    years = {}
    for r in rows:
        with contextlib.suppress(KeyError, ValueError):  # no year, or not a number
            years[r["item_id"]] = float(r["year"])
    values = np.array(list(years.values()))
    edges = sorted(set(np.percentile(values, [100 / 3, 200 / 3]).tolist()))
    mean, std = values.mean(), values.std()
    expected = {}
    for r in rows:
        item = r["item_id"]
        year = years.get(item)
        tokens = [t for t in re.split(r"[\W_]+", r.get("title", "").lower()) if t]
        expected[item] = {
            "item_idx": idx[item],
            "genres": _padded([vocab["genres"].get(g, OOV) for g in genres[item]], 2),
            "brand": vocab["brand"].get(r["brand"], OOV) if r.get("brand") else 0,
            "era": 0 if year is None else 1 + sum(year >= e for e in edges),
            "year": 0.0 if year is None else (year - mean) / std,
            "words": _padded([zlib.crc32(t.encode()) % 50 + 1 for t in tokens], 2),
        }
    return expected


def _actual(config: Config, table: str, ds: str, key: str) -> dict:
    return {r.pop(key): r for r in _table(config, table, ds)}


def _assert_rows(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for key, row in expected.items():
        got = actual[key]
        assert got["year"] == pytest.approx(row["year"], rel=1e-5, abs=1e-6), key
        assert {k: v for k, v in got.items() if k != "year"} == {
            k: v for k, v in row.items() if k != "year"
        }, key


def test_every_kind_matches_plain_python_and_indexes_stay_stable(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    specs = {"items": ITEM_SPECS, "users": USER_SPECS}
    day1 = _day_config(make_config, tmp_path / "raw", DS1, ITEMS_DAY1, **specs)
    steps = ["clean", "catalog", "vocab", "features"]
    manifest = run_steps(StepContext(day1, DS1, _spark=spark), steps).manifests[-1]

    vocab: dict[str, dict[str, int]] = {}
    expected = _expected_items(day1, DS1, ITEMS_DAY1, vocab)
    _assert_rows(_actual(day1, ITEM_FEATURES, DS1, "item_id"), expected)
    # Statistics, counted here from the catalogue.
    stats = manifest["features"]
    assert manifest["tables"]["items"] == {
        "table": ITEM_FEATURES, "catalogue_ds": DS1, "rows_in": 6, "rows_out": 5,
        "rows_without_index": 1,  # c9 never occurs in events
        "index_without_row": 2,  # i6, i7 occur in events, not in the catalogue
    }  # fmt: skip
    assert (stats["items.genres"]["vocabulary"], stats["items.genres"]["new_values"]) == (6, 6)
    assert stats["items.genres"]["truncated_rows"] == 1  # Heat has three genres
    assert stats["items.genres"]["rows_missing"] == 1  # Café Society's genres are blank
    assert stats["items.brand"]["oov_values"] == 1 and stats["items.brand"]["vocabulary"] == 2
    assert stats["items.year"]["rows_invalid"] == 1 and stats["items.year"]["rows_with_value"] == 4
    assert stats["items.words"]["truncated_rows"] == 1  # "Toy Story" fits, "Comedy Gold! 2" not
    assert stats["items.words"]["rows_missing"] == 1

    users = _actual(day1, USER_FEATURES, DS1, "user_id")
    user_idx = {r["user_id"]: r["user_idx"] for r in _table(day1, VOCAB_USERS, DS1)}
    genders = _vocabulary({u["user_id"]: [u["gender"]] for u in USERS_DAY1}, 1, 2, {})
    assert users == {
        u["user_id"]: {"user_idx": user_idx[u["user_id"]], "gender": genders[u["gender"]],
                       "age": float(u.get("age", 0.0))}
        for u in USERS_DAY1
    }  # fmt: skip
    tables = manifest["tables"]
    assert manifest["rows_in"] == 6 + tables["users"]["rows_in"]
    assert manifest["rows_out"] == 5 + len(users)  # one feature row per indexed user

    # Day 2: a new item and a new genre. Every value keeps its index; Horror gets the next one.
    day2 = _day_config(make_config, tmp_path / "raw", DS2, ITEMS_DAY2, **specs)
    run_steps(StepContext(day2, DS2, _spark=spark), steps)
    before = {k: dict(v) for k, v in vocab.items()}
    expected2 = _expected_items(day2, DS2, ITEMS_DAY2, vocab)
    assert vocab["genres"] == {**before["genres"], "Horror": max(before["genres"].values()) + 1}
    assert vocab["brand"] == before["brand"]  # "rare" is still on one row only: out of vocabulary
    _assert_rows(_actual(day2, ITEM_FEATURES, DS2, "item_id"), expected2)
    stored = {
        (r["entity"], r["feature"], r["value"]): (r["value_index"], r["first_seen_ds"])
        for r in _table(day2, FEATURE_VOCAB, DS2)
    }
    assert stored[("items", "genres", "Horror")] == (vocab["genres"]["Horror"], DS2)
    assert stored[("items", "genres", "Comedy")] == (vocab["genres"]["Comedy"], DS1)
    assert {v for (e, f, v) in stored if (e, f) == ("users", "gender")} == {"F", "M"}

    # A re-run of day 2 writes the same rows.
    first = _table(day2, ITEM_FEATURES, DS2)
    step("features").run(StepContext(day2, DS2, _spark=spark))
    assert sorted(_table(day2, ITEM_FEATURES, DS2), key=str) == sorted(first, key=str)

    # Day 1 rebuilt now that day 2's catalogue exists reads day 1's: no title from the future.
    assert snapshot_ds(day1.root, "items", DS1) == DS1
    step("features").run(StepContext(day1, DS1, _spark=spark))
    _assert_rows(_actual(day1, ITEM_FEATURES, DS1, "item_id"), expected)
    assert expected2["i1"]["words"] != expected["i1"]["words"]  # the renamed title


def test_the_summary_table_reads_counts_left_at_their_default() -> None:
    """A manifest keeps only the counts a feature set (pydantic exclude_unset): the table
    shows the others as 0, and each feature's vocabulary, edges or mean."""
    manifest = {
        "features": {
            "items.genre": {"kind": "multi", "field": "genre", "rows_with_value": 3,
                            "rows_missing": 1, "vocabulary": 4, "new_values": 2},
            "items.era": {"kind": "numeric", "field": "year", "rows_with_value": 4,
                          "rows_missing": 0, "boundaries": [1990.0, 1995.5]},
        }
    }  # fmt: skip
    rows = feature_rows(manifest)
    assert [r["feature"] for r in rows] == ["items.genre", "items.era"]
    assert (rows[0]["invalid"], rows[0]["out of vocab"], rows[0]["values (new)"]) == (0, 0, "4 (2)")
    assert rows[1]["scale"] == "edges 1990 1995.5" and rows[1]["values (new)"] == ""


def test_spec_errors_name_the_key(spark: SparkSession, make_config, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'features.items.genres.max_value'"):
        make_config("features.items.genres={kind: multi, max_value: 2}")
    with pytest.raises(ConfigError, match=r"'features.items.genres': Input tag 'multy'"):
        make_config("features.items.genres={kind: multy}")
    with pytest.raises(ConfigError, match=r"'features.users.age.buckets': Input should be"):
        make_config("features.users.age={kind: numeric, buckets: many}")
    with pytest.raises(ConfigError, match=r"feature name 'item_idx' must be"):
        make_config("features.items.item_idx={kind: categorical}")

    config = _day_config(
        make_config, tmp_path / "raw", DS1, ITEMS_DAY1, items={"colour": "{kind: categorical}"}
    )
    run_steps(StepContext(config, DS1, _spark=spark), ["clean", "catalog", "vocab"])
    with pytest.raises(ConfigError, match=r"^'features.items.colour': no row of items \(ds="):
        step("features").run(StepContext(config, DS1, _spark=spark))
    wrong_type = _day_config(
        make_config, tmp_path / "raw", DS1, ITEMS_DAY1, items={"brand": "{kind: numeric}"}
    )
    with pytest.raises(ConfigError, match=r"'features.items.brand': kind numeric, but no value"):
        step("features").run(StepContext(wrong_type, DS1, _spark=spark))
    assert last_attempt(config.root, "features", DS1)["status"] == "failed"
    assert current_record(config.root, ITEM_FEATURES, {"ds": DS1}) is None


def test_no_spec_is_a_note_and_no_catalogue_names_the_stage(
    spark: SparkSession, make_config, tmp_path: Path
) -> None:
    plain = make_config()
    result = step("features").run(StepContext(plain, DS1, _spark=spark))
    assert result.manifests == [] and "nothing to build" in result.notes[0]
    events = _write(tmp_path / "events", _events(DS1, ["i1", "i2"]))
    config = make_config(f"paths.raw_events={events}", "features.items.brand={kind: categorical}")
    run_steps(StepContext(config, DS1, _spark=spark), ["clean", "catalog", "vocab"])
    with pytest.raises(MissingInputError, match=r"no 'items' catalogue at or before ds=2026"):
        step("features").run(StepContext(config, DS1, _spark=spark))
