"""MovieLens 100K from the recbole wheel: checksums, cache, offline behaviour, raw events."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from helpers import skip_locally_fail_in_ci

from recpipe import storage
from recpipe.config import MovieLensConfig
from recpipe.datasets.movielens import (
    DatasetUnavailableError,
    fetch_movielens_100k,
    parse_ratings,
)

SETTINGS = MovieLensConfig()


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every pip download fail, as on a machine without network."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ml")
    try:
        return root, fetch_movielens_100k(SETTINGS, root)
    except DatasetUnavailableError as exc:  # pragma: no cover - depends on the network
        skip_locally_fail_in_ci(
            f"MovieLens 100K unavailable (needs the {SETTINGS.wheel} wheel from PyPI or a "
            f"cached copy): {exc}"
        )


def test_fetch_writes_one_rating_event_per_rating(fetched) -> None:
    root, summary = fetched
    cached = root / "cache" / "movielens-100k" / "ml-100k.inter"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == SETTINGS.member_sha256
    raw = root / "raw" / "movielens-100k"
    events = [json.loads(line) for line in (raw / "events" / "ratings.jsonl")
              .read_text().splitlines()]  # fmt: skip
    # MovieLens 100K as published: 100,000 ratings by 943 users on 1,682 movies.
    assert len(events) == 100_000 == summary["events"]
    assert len({e["user_id"] for e in events}) == 943 == summary["users"]
    assert len({e["item_id"] for e in events}) == 1682 == summary["items"]
    assert {e["event_type"] for e in events} == {"rating"}
    assert {e["value"] for e in events} == {1.0, 2.0, 3.0, 4.0, 5.0}
    # First data line of ml-100k.inter: 196 242 3 881250949
    assert events[0] == {
        "user_id": "196", "item_id": "242", "event_type": "rating", "ts": 881250949, "value": 3.0
    }  # fmt: skip


def test_fetch_writes_the_reference_inputs(fetched) -> None:
    """Items, users, triples and links, each from its verified file of the wheel, one raw
    record per line of it (read here with csv, not with recpipe)."""
    root, summary = fetched
    cache = root / "cache" / "movielens-100k"
    for name, sha in SETTINGS.reference_sha256.items():
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == sha

    def atomic(name: str) -> list[dict[str, str]]:
        lines = (cache / name).read_text().splitlines()
        header = [field.split(":")[0] for field in lines[0].split("\t")]
        return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]

    raw = root / "raw" / "movielens-100k"
    items = [json.loads(line) for line in (raw / "items" / "items.jsonl").read_text().splitlines()]
    # As published: 1,682 movies, 943 users, and recbole's 91,631 triples and 1,598 links.
    assert len(items) == 1682 == summary["catalog_items"]
    source = atomic("ml-100k.item")
    assert [(i["item_id"], i["title"], i["genres"]) for i in items] == [
        (s["item_id"], s["movie_title"], s["class"].split()) for s in source
    ]
    assert items[0] == {"item_id": "1", "title": "Toy Story", "year": "1995",
                        "genres": ["Animation", "Children's", "Comedy"]}  # fmt: skip
    users = [json.loads(line) for line in (raw / "users" / "users.jsonl").read_text().splitlines()]
    assert users == atomic("ml-100k.user") and len(users) == 943
    with (raw / "kg" / "kg.csv").open(newline="") as handle:
        triples = list(csv.DictReader(handle))
    assert len(triples) == 91631 == summary["triples"]
    assert [(t["head"], t["relation"], t["tail"]) for t in triples] == [
        (s["head_id"], s["relation_id"], s["tail_id"]) for s in atomic("ml-100k.kg")
    ]
    links = [json.loads(line) for line in (raw / "links" / "links.jsonl").read_text().splitlines()]
    assert [(link["item_id"], link["entity"]) for link in links] == [
        (s["item_id"], s["entity_id"]) for s in atomic("ml-100k.link")
    ]
    assert summary["raw_items"] == str(raw / "items")


def test_second_fetch_uses_cache_offline(fetched, tmp_path, monkeypatch) -> None:
    root, _ = fetched
    copy = tmp_path / "root"
    shutil.copytree(root / "cache", copy / "cache")
    go_offline(monkeypatch)
    assert fetch_movielens_100k(SETTINGS, copy)["events"] == 100_000


def test_corrupt_cache_is_fetched_again(fetched, tmp_path) -> None:
    root, _ = fetched
    copy = tmp_path / "root"
    shutil.copytree(root / "cache", copy / "cache")
    cached = copy / "cache" / "movielens-100k" / "ml-100k.inter"
    cached.write_bytes(cached.read_bytes()[:-100])
    assert fetch_movielens_100k(SETTINGS, copy)["events"] == 100_000
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == SETTINGS.member_sha256


def test_offline_and_uncached_is_a_clear_error(tmp_path, monkeypatch) -> None:
    go_offline(monkeypatch)
    with pytest.raises(DatasetUnavailableError, match=r"offline.*source_file"):
        fetch_movielens_100k(SETTINGS, tmp_path)


def test_checksum_mismatch_is_refused(fetched, tmp_path) -> None:
    bad = MovieLensConfig(member_sha256="0" * 64)
    with pytest.raises(DatasetUnavailableError, match="member_sha256"):
        fetch_movielens_100k(bad, tmp_path)


def test_local_u_data_file(tmp_path) -> None:
    source = tmp_path / "u.data"
    source.write_text("1\t10\t4\t874965758\n2\t10\t3\t876893171\n")
    settings = MovieLensConfig(source_file=str(source))
    summary = fetch_movielens_100k(settings, tmp_path / "root")
    assert (summary["events"], summary["users"], summary["items"]) == (2, 2, 1)
    assert parse_ratings(b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                         b"5\t6\t2\t100\n") == [("5", "6", 2.0, 100)]  # fmt: skip
    with pytest.raises(DatasetUnavailableError, match="line 1"):
        parse_ratings(b"1\t2\t3\n")


def test_raw_events_and_cache_at_a_uri(tmp_path, monkeypatch) -> None:
    """Under a URI root (a viewfs:// mount of a local folder) the raw events and the ratings
    cache go through recpipe.storage; the wheel download needs a local folder."""
    storage.configure({"fs.viewfs.mounttable.mltest.link./state": f"file://{tmp_path / 'mnt'}"})
    source = tmp_path / "u.data"
    source.write_text("1\t10\t4\t874965758\n2\t11\t3\t876893171\n")
    settings = MovieLensConfig(source_file=str(source))
    summary = fetch_movielens_100k(settings, "viewfs://mltest/state", tmp_path / "local")
    assert summary["raw_events"] == "viewfs://mltest/state/raw/movielens-100k/events"
    assert "raw_items" not in summary  # a source_file has no catalogue beside it
    written = (tmp_path / "mnt" / "raw" / "movielens-100k" / "events" / "ratings.jsonl").read_text()
    assert [json.loads(line)["item_id"] for line in written.splitlines()] == ["10", "11"]
    with pytest.raises(ValueError, match="not local"):
        fetch_movielens_100k(settings, "viewfs://mltest/state")
    # A verified cache at the URI is used offline.
    data = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n5\t6\t2\t100\n"
    cache = tmp_path / "mnt" / "cache" / "movielens-100k"
    cache.mkdir(parents=True)
    (cache / "ml-100k.inter").write_bytes(data)
    cached = MovieLensConfig(member_sha256=hashlib.sha256(data).hexdigest(), catalog=False)
    go_offline(monkeypatch)
    assert fetch_movielens_100k(cached, "viewfs://mltest/state", tmp_path / "local")["events"] == 1
