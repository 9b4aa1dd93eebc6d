"""MovieLens 100K from the recbole wheel: checksums, cache, offline behaviour, raw events."""

from __future__ import annotations

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
    events = [json.loads(line) for line in (root / "raw" / "movielens-100k" / "ratings.jsonl")
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
    assert summary["raw_events"] == "viewfs://mltest/state/raw/movielens-100k"
    written = (tmp_path / "mnt" / "raw" / "movielens-100k" / "ratings.jsonl").read_text()
    assert [json.loads(line)["item_id"] for line in written.splitlines()] == ["10", "11"]
    with pytest.raises(ValueError, match="not local"):
        fetch_movielens_100k(settings, "viewfs://mltest/state")
    # A verified cache at the URI is used offline.
    data = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n5\t6\t2\t100\n"
    cache = tmp_path / "mnt" / "cache" / "movielens-100k"
    cache.mkdir(parents=True)
    (cache / "ml-100k.inter").write_bytes(data)
    cached = MovieLensConfig(member_sha256=hashlib.sha256(data).hexdigest())
    go_offline(monkeypatch)
    assert fetch_movielens_100k(cached, "viewfs://mltest/state", tmp_path / "local")["events"] == 1
