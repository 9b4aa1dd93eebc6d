"""MovieLens 100K, read out of the ``recbole`` wheel on PyPI and turned into raw inputs: the
ratings as events, and the item catalogue, user profiles, knowledge graph and item -> entity
links as the catalog stage's reference inputs.

The data set's licence forbids redistribution, so it is never committed: the wheel is
downloaded with ``pip download --no-deps``, both the wheel and the ratings file are checked
against SHA-256 sums from the config, and the ratings are cached under ``paths.root`` (any
location, through :mod:`recpipe.storage`). The wheel itself is a download cache on this
machine's disk under ``paths.local``: pip writes only to a local folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from recpipe import storage
from recpipe.config import MovieLensConfig
from recpipe.errors import RecpipeError
from recpipe.layout import raw_dir
from recpipe.storage import Location, LocationLike, as_location

log = logging.getLogger(__name__)

NAME = "movielens-100k"
# The summary keys naming the reference inputs written beside the events: equal to their
# paths.* config keys.
REFERENCE_KEYS = ("raw_items", "raw_users", "raw_kg", "raw_links")


class DatasetUnavailableError(RecpipeError):
    """The data set could not be obtained (offline and not cached) or failed its checksum."""


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _download_wheel(spec: str, dest: Path) -> Path:
    # A local download cache (pip's -d), not state: it never leaves this machine.
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--retries", "1", "--timeout", "30", "--disable-pip-version-check", "-q",
        "-d", str(dest), spec,
    ]  # fmt: skip
    log.info("fetch-data: downloading %s from PyPI", spec)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    name = spec.split("==")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DatasetUnavailableError(
            f"could not download {spec} from PyPI (offline?) and no cached copy exists: "
            f"{detail[0]}. Set datasets.movielens.source_file to a local ml-100k.inter or "
            "u.data to work offline."
        )
    return wheels[-1]


def _verified_wheel(settings: MovieLensConfig, downloads: Path) -> Path:
    """The recbole wheel: a verified earlier download, else a fresh one (checked)."""
    name = settings.wheel.split("==")[0].replace("-", "_")
    for earlier in sorted(downloads.glob(f"{name}-*.whl")):
        if sha256_of(earlier.read_bytes()) == settings.wheel_sha256:
            return earlier
    wheel = _download_wheel(settings.wheel, downloads)
    wheel_bytes = wheel.read_bytes()
    if sha256_of(wheel_bytes) != settings.wheel_sha256:
        wheel.unlink()
        raise DatasetUnavailableError(
            f"{wheel.name} has SHA-256 {sha256_of(wheel_bytes)}, expected "
            f"{settings.wheel_sha256} (datasets.movielens.wheel_sha256); file removed"
        )
    return wheel


def _member_path(settings: MovieLensConfig, file_name: str) -> str:
    """Path inside the wheel of one data set file (beside the ratings member)."""
    return f"{settings.member.rsplit('/', 1)[0]}/{file_name}"


def load_member(
    settings: MovieLensConfig,
    file_name: str,
    expected_sha256: str,
    sha_key: str,
    cache: LocationLike,
    downloads: Path,
) -> bytes:
    """The verified bytes of one data set file (``ml-100k.inter``, ``ml-100k.item`` ...).

    ``cache`` (any location) holds verified copies; ``downloads`` is the local folder pip
    downloads the wheel into. ``sha_key`` is the config key of ``expected_sha256``.
    """
    cached = as_location(cache) / file_name
    try:
        data = storage.read_bytes(cached)
    except FileNotFoundError:
        pass
    else:
        if sha256_of(data) == expected_sha256:
            log.info("fetch-data: using cached %s", cached)
            return data
        log.warning("fetch-data: cached %s fails its checksum; fetching again", cached)
    with zipfile.ZipFile(_verified_wheel(settings, downloads)) as archive:
        data = archive.read(_member_path(settings, file_name))
    if sha256_of(data) != expected_sha256:
        raise DatasetUnavailableError(
            f"{_member_path(settings, file_name)} has SHA-256 {sha256_of(data)}, expected "
            f"{expected_sha256} ({sha_key})"
        )
    storage.write_bytes(cached, data)  # atomic: a killed fetch leaves no half file
    return data


def load_ratings_file(settings: MovieLensConfig, cache: LocationLike, downloads: Path) -> bytes:
    """The verified ``ml-100k.inter`` bytes: a local file named in the config, the cache, or
    the wheel."""
    if settings.source_file:
        # The user's own local input file, named in the config: not recpipe state.
        source = Path(settings.source_file)
        if not source.is_file():
            raise DatasetUnavailableError(f"datasets.movielens.source_file {source} not found")
        return source.read_bytes()
    ratings = settings.member.rsplit("/", 1)[-1]
    return load_member(
        settings, ratings, settings.member_sha256, "datasets.movielens.member_sha256", cache,
        downloads,
    )  # fmt: skip


def parse_ratings(data: bytes) -> list[tuple[str, str, float, int]]:
    """(user, item, rating, epoch seconds) rows of ``ml-100k.inter`` (header) or ``u.data``."""
    rows = []
    for number, line in enumerate(data.decode().splitlines(), start=1):
        fields = line.split("\t")
        if number == 1 and ":" in fields[0]:
            continue  # recbole's typed header, e.g. "user_id:token"
        if not line.strip():
            continue
        if len(fields) != 4:
            raise DatasetUnavailableError(f"ratings line {number}: expected 4 tab-separated fields")
        user, item, rating, ts = fields
        rows.append((user, item, float(rating), int(float(ts))))
    return rows


def parse_atomic(data: bytes, file_name: str) -> list[dict[str, str]]:
    """Rows of a recbole atomic file (tab-separated, header ``name:type``) as {name: text}."""
    lines = data.decode().splitlines()
    names = [field.split(":")[0] for field in lines[0].split("\t")] if lines else []
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise DatasetUnavailableError(
                f"{file_name} line {number}: expected {len(names)} tab-separated fields"
            )
        rows.append(dict(zip(names, fields, strict=True)))
    return rows


def _item_record(row: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {"item_id": row["item_id"], "title": row["movie_title"]}
    if row.get("release_year", "").strip():
        record["year"] = row["release_year"].strip()
    record["genres"] = row["class"].split()  # multi-valued: a JSON array
    return record


def _renamed(row: dict[str, str], names: dict[str, str]) -> dict[str, str]:
    return {names.get(key, key): value for key, value in row.items()}


def _json_lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_reference(
    settings: MovieLensConfig, cache: Location, downloads: Path, out: Location
) -> dict[str, Any]:
    """Write the item catalogue, user profiles, knowledge graph and links as raw inputs.

    Items and users as JSON lines (genres a JSON array), the 91k triples as CSV with a
    header; returns {input: folder} plus counts.
    """

    def rows(file_name: str) -> list[dict[str, str]]:
        expected = settings.reference_sha256.get(file_name)
        if expected is None:
            raise DatasetUnavailableError(
                f"datasets.movielens.reference_sha256 has no entry for {file_name}"
            )
        key = f"datasets.movielens.reference_sha256.{file_name}"
        data = load_member(settings, file_name, expected, key, cache, downloads)
        return parse_atomic(data, file_name)

    items = [_item_record(row) for row in rows("ml-100k.item")]
    storage.write_text(out / "items" / "items.jsonl", _json_lines(items))
    users = rows("ml-100k.user")
    storage.write_text(out / "users" / "users.jsonl", _json_lines(users))
    triples = rows("ml-100k.kg")
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["head", "relation", "tail"])
    writer.writerows((t["head_id"], t["relation_id"], t["tail_id"]) for t in triples)
    storage.write_text(out / "kg" / "kg.csv", table.getvalue())
    links = [_renamed(row, {"entity_id": "entity"}) for row in rows("ml-100k.link")]
    storage.write_text(out / "links" / "links.jsonl", _json_lines(links))
    return {
        "raw_items": str(out / "items"),
        "raw_users": str(out / "users"),
        "raw_kg": str(out / "kg"),
        "raw_links": str(out / "links"),
        "catalog_items": len(items),
        "profiles": len(users),
        "triples": len(triples),
        "links": len(links),
    }


def write_raw_events(rows: list[tuple[str, str, float, int]], out_dir: LocationLike) -> Location:
    """Write one ``rating`` event per rating as JSON lines (atomically); returns the file."""
    path = as_location(out_dir) / "ratings.jsonl"
    lines = []
    for user, item, rating, ts in rows:
        record = {"user_id": user, "item_id": item, "event_type": "rating", "ts": ts}
        record["value"] = rating
        lines.append(json.dumps(record) + "\n")
    # 100K ratings are a few MB: one write replaces the file whole.
    storage.write_text(path, "".join(lines))
    return path


def fetch_movielens_100k(
    settings: MovieLensConfig, root: LocationLike, local: Path | None = None
) -> dict[str, Any]:
    """Obtain MovieLens 100K and write it as raw events under ``<root>/raw/movielens-100k``.

    ``local`` (``paths.local``) holds the downloaded wheel; it defaults to ``root`` when that
    is a local folder.
    """
    state = as_location(root)
    if local is None:
        if not state.is_local:
            raise ValueError(f"{state} is not local: pass a local folder for the wheel download")
        local = state.local_path()
    downloads = Path(local) / "cache" / NAME / "downloads"
    cache = state / "cache" / NAME
    data = load_ratings_file(settings, cache, downloads)
    rows = parse_ratings(data)
    # Events and each reference input in their own folder: a folder is one input.
    path = write_raw_events(rows, raw_dir(state, NAME) / "events")
    summary: dict[str, Any] = {
        "dataset": NAME,
        "raw_events": str(path.parent),
        "events": len(rows),
        "users": len({r[0] for r in rows}),
        "items": len({r[1] for r in rows}),
        "sha256": sha256_of(data),
    }
    log.info("fetch-data: wrote %d rating events to %s", len(rows), path)
    if settings.catalog and not settings.source_file:
        summary.update(write_reference(settings, cache, downloads, raw_dir(state, NAME)))
    return summary
