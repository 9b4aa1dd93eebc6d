"""The tests' DAG runs: landing data, run parameters, and outputs read back with pyarrow and
json only (recpipe is not installed in the Airflow environment)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.dataset as pads

K = 5  # recommendations per user in the tests' runs
# Each table's producing stage: its manifest names the committed version.
PRODUCERS = {"events": "clean", "sessions": "sessionize", "train": "split", "test": "split",
             "samples_pairwise": "export"}  # fmt: skip


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
    """Write ``rows`` as ``<landing>/<ds>/events.jsonl`` (the DAG's raw_events ``{ds}`` path),
    and a title for each of their items as ``<landing>/<ds>-items/items.jsonl`` (raw_items)."""
    folder = landing / ds
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in rows))
    items = sorted({e["item_id"] for e in rows})
    catalogue = landing / f"{ds}-items"
    catalogue.mkdir(parents=True, exist_ok=True)
    (catalogue / "items.jsonl").write_text(
        "".join(json.dumps({"item_id": i, "title": f"Title {i}"}) + "\n" for i in items)
    )


def manifest(root: Path, stage: str, ds: str) -> dict:
    """The manifest ``stage`` wrote for ``ds`` under the state root."""
    return json.loads((root / "manifests" / stage / f"ds={ds}.json").read_text())


def published(root: Path, database: str, ds: str) -> tuple[dict, list[dict]]:
    """The ``model=published`` pointer of ``ds`` and the rows of the version it names."""
    folder = root / "warehouse" / f"{database}.db" / "recommendations"
    pointer = json.loads((folder / f"ds={ds}" / "model=published" / "_CURRENT.json").read_text())
    location = root / pointer["path"]  # pointers are relative to paths.root
    return pointer, pads.dataset(location).to_table().to_pylist()


def run_conf(landing: Path, root: Path, database: str, *extra: str) -> dict:
    """DAG params of the tests' runs: two baselines, BPR-MF for two epochs, top-5 lists."""
    return {
        "raw_events": str(landing / "{ds}"),
        "raw_items": str(landing / "{ds}-items"),
        "baselines": ["popularity", "als"],
        "deep_models": ["bpr_mf"],
        "overrides": [
            f"paths.root={root}", "split.protocols=[random_by_user]",
            f"warehouse.database={database}", "train.max_epochs=2", "train.processes=1",
            "export.files_per_process=1", "export.negatives=2", f"score.k={K}",
            "export.kinds=[pairwise]",  # all BPR-MF reads: each task's export stays short
            "spark.shuffle_partitions=2", "gate.tolerance=1.0",
            # Every item's title: "Title i<n>" -> tokens "title" and "i<n>".
            "features.items.title_words={kind: text, field: title, hash_buckets: 64, "
            "max_tokens: 4}",
            *extra,
        ],
    }  # fmt: skip


def lake_counts(root: Path, ds: str) -> dict[str, int]:
    """Rows of the committed version of each table, found through its producer's manifest."""
    counts = {}
    for table, stage in PRODUCERS.items():
        for name, record in manifest(root, stage, ds)["outputs"][table].items():
            counts[f"{table}/{name}"] = pads.dataset(root / record["path"]).count_rows()
    return counts
