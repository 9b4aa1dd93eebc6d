"""Test helpers: write raw JSON-lines events, run a chain of real stages, read outputs back."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ci import in_ci
from pyspark.sql import SparkSession

from recpipe.config import Config, load_config
from recpipe.stages.clean import run_clean
from recpipe.stages.sessionize import run_sessionize
from recpipe.stages.split import run_split
from recpipe.stages.vocab import run_vocab

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
STAGES = {
    "clean": run_clean,
    "vocab": run_vocab,
    "sessionize": run_sessionize,
    "split": run_split,
}
CHAIN: tuple[str, ...] = ("clean", "vocab", "sessionize", "split")


def skip_locally_fail_in_ci(reason: str) -> NoReturn:
    """A prerequisite (data, an environment) is missing: skip on a developer machine, fail in CI.

    ``reason`` names what is missing; in CI a skip would hide that the test never ran.
    """
    if in_ci():
        pytest.fail(f"CI={os.environ['CI']}: {reason} (tests may not skip in CI)", pytrace=False)
    pytest.skip(reason)


def write_jsonl(path: Path, events: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line to ``path`` (parents created) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(dict(event)) + "\n" for event in events))
    return path


def build_config(root: Path, *overrides: str) -> Config:
    """Config from ``conf/base.yaml`` + ``conf/local.yaml`` rooted at ``root``."""
    return load_config(
        [CONF_DIR / "base.yaml", CONF_DIR / "local.yaml"], [f"paths.root={root}", *overrides]
    )


def run_chain(
    spark: SparkSession, config: Config, ds: str, stages: Sequence[str] = CHAIN
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` in order for ``ds``; returns their manifests by stage name."""
    manifests = {}
    for stage in stages:
        manifests[stage] = STAGES[stage](spark, config, ds)
        assert manifests[stage]["status"] == "ok", manifests[stage]
    return manifests


# The stage whose manifest commits each lake table (its "outputs" name the current versions).
PRODUCER = {
    "events": "clean",
    "quarantine": "clean",
    "vocab_users": "vocab",
    "vocab_items": "vocab",
    "sessions": "sessionize",
    "train": "split",
    "valid": "split",
    "test": "split",
    "samples_pairwise": "export",
    "samples_pointwise": "export",
    "samples_sequence": "export",
    "samples_bag": "export",
    "samples_pairwise_recent": "export",
    "samples_pointwise_recent": "export",
    "samples_sequence_recent": "export",
    "samples_bag_recent": "export",
    "als_user_factors": "train-als",
    "itemknn_neighbours": "train-itemknn",
}


def _producer(table: str) -> str:
    """The stage whose manifest commits ``table`` (user_rows_<model>: train-<model>)."""
    if table.startswith("user_rows_"):
        return "train-" + table.removeprefix("user_rows_")
    return PRODUCER[table]


def partition_dir(root: Path, table: str, ds: str, protocol: str | None = None) -> Path:
    """Folder of the committed version of a lake partition, read from the manifest JSON."""
    manifest = json.loads(
        (Path(str(root)) / "manifests" / _producer(table) / f"ds={ds}.json").read_text()
    )
    assert manifest["status"] == "ok", manifest
    name = f"ds={ds}" + ("" if protocol is None else f"/protocol={protocol}")
    folder = Path(str(root)) / manifest["outputs"][table][name]["path"]
    assert folder.is_dir(), f"partition {folder} was not published"
    return folder


def read_rows(root: Path, table: str, ds: str, protocol: str | None = None) -> list[dict[str, Any]]:
    """All rows of one published lake partition, read with pyarrow (not with recpipe code)."""
    folder = partition_dir(root, table, ds, protocol)
    table = pq.read_table(folder)
    # Spark writes INT96 timestamps (naive, UTC by session setting): read them as aware UTC.
    schema = pa.schema(
        [
            field.with_type(pa.timestamp("us", tz="UTC"))
            if pa.types.is_timestamp(field.type)
            else field
            for field in table.schema
        ]
    )
    return table.cast(schema).to_pylist()


def read_manifest(root: Path, stage: str, ds: str) -> dict[str, Any]:
    """The JSON manifest ``<root>/manifests/<stage>/ds=<ds>.json``."""
    return json.loads((Path(str(root)) / "manifests" / stage / f"ds={ds}.json").read_text())


def epoch_ms(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 time with a zone, e.g. ``2026-11-10T10:00:00Z``."""
    return round(dt.datetime.fromisoformat(text).timestamp() * 1000)


def utc(text: str) -> dt.datetime:
    """Aware UTC datetime of an ISO-8601 time with a zone."""
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


# --- tiny training data (shared by test_train and test_horovod) -----------------------------

TRAIN_DS = "2026-11-20"
TRAIN_N_USERS, TRAIN_N_ITEMS = 40, 60
TRAIN_BASE = (
    "split.protocols=[leave_last_out,random_by_user]",
    "split.random_by_user.valid=0.1",
    "split.random_by_user.test=0.2",
    "split.random_by_user.train=0.7",
    "export.negatives=2",
    "export.max_len=8",
    "train.processes=2",
    "export.files_per_process=1",
    "warehouse.database=train_tests",
    "train.torch_threads=1",
    # Training mechanics only; the refit on protocol all is trained where a test asks for it.
    "score.train_on=protocol",
)


def train_events() -> list[dict]:
    """Two taste groups walking their half of the catalogue in order, with some noise."""
    rng = random.Random(3)
    rows = []
    for user in range(TRAIN_N_USERS):
        group = user % 2
        start = rng.randrange(TRAIN_N_ITEMS // 2)
        count = rng.randint(8, 20)
        for k in range(count):
            item = group * (TRAIN_N_ITEMS // 2) + (start + k) % (TRAIN_N_ITEMS // 2)
            if rng.random() < 0.1:
                item = rng.randrange(TRAIN_N_ITEMS)
            rows.append({"user_id": f"u{user}", "item_id": f"i{item}", "event_type": "view",
                         "ts": f"{TRAIN_DS}T{k // 60:02d}:{k % 60:02d}:{user:02d}Z"})  # fmt: skip
    return rows


def train_at_location(root: Any, hadoop: dict[str, str], local: Path) -> tuple[Any, dict]:
    """bpr_mf under torchrun (2 ranks, 1 epoch) with every state file at ``root`` (a
    :class:`~recpipe.storage.Location`): two hand-made sample shards, item counts, checkpoints,
    model and result; ``hadoop`` reaches ``root``; launcher files go to ``local``."""

    from recpipe import storage
    from recpipe.config import TrainConfig
    from recpipe.models import model_class
    from recpipe.train.launchers import launch
    from recpipe.train.spec import TrainSpec, save_array

    storage.configure(hadoop)
    shards = []
    for part in range(2):
        rows = 64
        users = np.arange(rows, dtype=np.int32) % 10 + 1
        items = (np.arange(rows, dtype=np.int32) + part) % TRAIN_N_ITEMS + 1
        negatives = pa.array([[(int(i) % TRAIN_N_ITEMS) + 1, 1] for i in items + 7],
                             pa.list_(pa.int32()))  # fmt: skip
        table = pa.table({"user_idx": users, "item_idx": items, "negatives": negatives})
        shard = root / "lake" / "samples" / f"part-{part}.parquet"
        filesystem, path = storage.arrow_path(shard)
        filesystem.create_dir(path.rsplit("/", 1)[0])
        pq.write_table(table, path, filesystem=filesystem)
        shards.append((str(shard), rows))
    run = root / "models" / "bpr_mf"
    save_array(run / "item_counts.npy", np.ones(TRAIN_N_ITEMS + 1, dtype=np.int64))
    settings = TrainConfig(launcher="torchrun", processes=2, max_epochs=1, torch_threads=1,
                           checkpoint_every=2)  # fmt: skip
    config = model_class("bpr_mf").config_class(batch_size=16)
    spec = TrainSpec(
        model="bpr_mf", model_config=config.model_dump(mode="json"),
        context={"n_users": 11, "n_items": TRAIN_N_ITEMS, "max_len": 8},
        item_counts_file=str(run / "item_counts.npy"), shards=shards,
        settings=settings.model_dump(mode="json"), run_dir=str(run),
        model_file=str(run / "model.pt"), local_dir=str(local), storage=hadoop,
    )  # fmt: skip
    return spec, launch(spec, settings)


def brute_force_top_k(
    scores: np.ndarray, users: np.ndarray, seen: dict[int, set[int]], k: int
) -> tuple[list[list[int]], list[list[float]]]:
    """Top-``k`` by hand: per row every item but padding, seen, NaN and -inf ones, sorted by
    (score descending, item ascending), padded with (item 0, -inf)."""
    items_out, scores_out = [], []
    for row, user in enumerate(users):
        candidates = [
            (float(scores[row, item]), item)
            for item in range(1, scores.shape[1])
            if item not in seen.get(int(user), set()) and not np.isnan(scores[row, item])
        ]
        candidates = [c for c in candidates if c[0] != -math.inf]
        candidates.sort(key=lambda c: (-c[0], c[1]))
        best = candidates[:k] + [(-math.inf, 0)] * (k - len(candidates[:k]))
        items_out.append([item for _, item in best])
        scores_out.append([score for score, _ in best])
    return items_out, scores_out
