"""MovieLens 100K, read out of the ``recbole`` wheel on PyPI and turned into raw event logs.

The data set's licence forbids redistribution, so it is never committed: the wheel is
downloaded with ``pip download --no-deps``, both the wheel and the ratings file are checked
against SHA-256 sums from the config, and the ratings are cached under ``paths.root`` (any
location, through :mod:`recpipe.storage`). The wheel itself is a download cache on this
machine's disk under ``paths.local``: pip writes only to a local folder.
"""

from __future__ import annotations

import hashlib
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


def _ratings_from_wheel(settings: MovieLensConfig, downloads: Path) -> bytes:
    wheel = _download_wheel(settings.wheel, downloads)
    wheel_bytes = wheel.read_bytes()
    if sha256_of(wheel_bytes) != settings.wheel_sha256:
        wheel.unlink()
        raise DatasetUnavailableError(
            f"{wheel.name} has SHA-256 {sha256_of(wheel_bytes)}, expected "
            f"{settings.wheel_sha256} (datasets.movielens.wheel_sha256); file removed"
        )
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(settings.member)


def load_ratings_file(settings: MovieLensConfig, cache: LocationLike, downloads: Path) -> bytes:
    """The verified ``ml-100k.inter`` bytes: from the cache, a local file, or the wheel.

    ``cache`` (any location) holds the verified ratings; ``downloads`` is the local folder
    pip downloads the wheel into.
    """
    cached = as_location(cache) / "ml-100k.inter"
    if settings.source_file:
        # The user's own local input file, named in the config: not recpipe state.
        source = Path(settings.source_file)
        if not source.is_file():
            raise DatasetUnavailableError(f"datasets.movielens.source_file {source} not found")
        return source.read_bytes()
    try:
        data = storage.read_bytes(cached)
    except FileNotFoundError:
        pass
    else:
        if sha256_of(data) == settings.member_sha256:
            log.info("fetch-data: using cached %s", cached)
            return data
        log.warning("fetch-data: cached %s fails its checksum; fetching again", cached)
    data = _ratings_from_wheel(settings, downloads)
    if sha256_of(data) != settings.member_sha256:
        raise DatasetUnavailableError(
            f"{settings.member} has SHA-256 {sha256_of(data)}, expected {settings.member_sha256}"
            " (datasets.movielens.member_sha256)"
        )
    storage.write_bytes(cached, data)  # atomic: a killed fetch leaves no half file
    return data


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
    data = load_ratings_file(settings, state / "cache" / NAME, downloads)
    rows = parse_ratings(data)
    path = write_raw_events(rows, raw_dir(state, NAME))
    summary = {
        "dataset": NAME,
        "raw_events": str(path.parent),
        "events": len(rows),
        "users": len({r[0] for r in rows}),
        "items": len({r[1] for r in rows}),
        "sha256": sha256_of(data),
    }
    log.info("fetch-data: wrote %d rating events to %s", len(rows), path)
    return summary
