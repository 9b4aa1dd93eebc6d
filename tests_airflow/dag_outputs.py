"""Landing data for the daily DAG and its outputs read back with pyarrow and json only
(recpipe is not installed in the Airflow environment)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.dataset as pads


def events(ds: str, users: range) -> list[dict]:
    """Raw view events of ``users`` on ``ds``: two taste groups of 20 items, 6-12 views each."""
    rng = random.Random(ds)
    rows = []
    for user in users:
        start = rng.randrange(20)
        for k in range(rng.randint(6, 12)):
            item = (user % 2) * 20 + (start + k) % 20
            clock = f"{k // 60:02d}:{k % 60:02d}:{user % 60:02d}"
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "event_type": "view",
                         "ts": f"{ds}T{clock}Z"})  # fmt: skip
    return rows


def land(landing: Path, ds: str, rows: list[dict]) -> None:
    """Write ``rows`` as ``<landing>/<ds>/events.jsonl`` (the DAG's raw_events ``{ds}`` path)."""
    folder = landing / ds
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in rows))


def manifest(root: Path, stage: str, ds: str) -> dict:
    """The manifest ``stage`` wrote for ``ds`` under the state root."""
    return json.loads((root / "manifests" / stage / f"ds={ds}.json").read_text())


def published(root: Path, database: str, ds: str) -> tuple[dict, list[dict]]:
    """The ``model=published`` pointer of ``ds`` and the rows of the version it names."""
    folder = root / "warehouse" / f"{database}.db" / "recommendations"
    pointer = json.loads((folder / f"ds={ds}" / "model=published" / "_CURRENT.json").read_text())
    location = root / pointer["path"]  # pointers are relative to paths.root
    return pointer, pads.dataset(location).to_table().to_pylist()
