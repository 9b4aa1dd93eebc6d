"""Event context features (``features.context``): indexed from each sample's own event, never
from another moment; each user's last train event's context for scoring; read by the
factorisation models on their user side.

Expected values are computed here in plain Python from the events the test writes (datetime
for the hour and weekday, Counter for the vocabulary), with the user and item indexes read
from the vocab stage's tables.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pytest
import torch
from helpers import CONF_DIR, build_config, run_chain, write_jsonl
from pyspark.sql import SparkSession
from test_feature_models import model_settings_of

from recpipe.commit import current_version
from recpipe.config import ConfigError, load_config
from recpipe.data.batch import Batch
from recpipe.features_data import context_tables
from recpipe.manifest import ExportManifest, FeaturesManifest
from recpipe.models import ModelContext, model_class
from recpipe.stages.export import run_export
from recpipe.stages.features import run_features

DS = "2026-11-18"  # a Wednesday
DEVICES = ("web", "ios", "android")
N_USERS, EVENTS_PER_USER, NEGATIVES = 6, 9, 2
CONTEXT = (
    "features.context.device={kind: categorical, min_count: 2}",
    "features.context.hour={kind: time, part: hour}",
    "features.context.day={kind: time, part: weekday}",
)
SETTINGS = (
    "split.protocols=[random_by_user]",
    "split.random_by_user.train=0.7",
    "split.random_by_user.valid=0.1",
    "split.random_by_user.test=0.2",
    f"export.negatives={NEGATIVES}",
    "export.max_len=4",
    "export.files_per_process=1",
    "export.kinds=[pairwise, pointwise, sequence]",
    "train.processes=1",
)


def _events() -> list[dict[str, Any]]:
    """Events over the three days up to DS, each user mostly on one device; one 'tv' event
    (below min_count: out of vocabulary) and some without a device (missing)."""
    rows = []
    start = dt.datetime.fromisoformat(DS).replace(tzinfo=dt.UTC) - dt.timedelta(days=2)
    for user in range(N_USERS):
        for k in range(EVENTS_PER_USER):
            moment = start + dt.timedelta(hours=5 * k + user, minutes=user)
            row = {"user_id": f"u{user}", "item_id": f"i{(3 * user + k) % 17}",
                   "event_type": "view", "ts": moment.strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
            if (user + k) % 4:
                row["device"] = DEVICES[user % 3] if k % 3 else DEVICES[(user + k) % 3]
            rows.append(row)
    rows[5]["device"] = "tv"
    return rows


def _moment(row: dict[str, Any]) -> dt.datetime:
    return dt.datetime.strptime(row["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _device_vocabulary(rows: list[dict[str, Any]], min_count: int) -> dict[str, int]:
    """Values on ``min_count`` events or more, numbered from 2 by (events desc, value)."""
    counts = Counter(r["device"] for r in rows if "device" in r)
    kept = sorted((v for v, n in counts.items() if n >= min_count), key=lambda v: (-counts[v], v))
    return {value: 2 + k for k, value in enumerate(kept)}


def _expected_context(row: dict[str, Any], vocabulary: dict[str, int]) -> tuple[int, int, int]:
    device = 0 if "device" not in row else vocabulary.get(row["device"], 1)
    moment = _moment(row)
    return device, moment.hour + 1, moment.weekday() + 1


def _table(root: Path, table: str, partition: dict[str, str]) -> list[dict[str, Any]]:
    folder = current_version(root, table, partition).local_path()
    return pads.dataset(folder, format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def chain(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("context")
    rows = _events()
    raw = write_jsonl(folder / "raw" / "events.jsonl", rows)
    config = build_config(folder / "root", f"paths.raw_events={raw}", *CONTEXT, *SETTINGS)
    run_chain(spark, config, DS, ("clean", "vocab"))
    features = run_features(spark, config, DS)
    run_chain(spark, config, DS, ("sessionize", "split"))
    export = run_export(spark, config, DS)
    return {"root": folder / "root", "rows": rows, "features": features, "export": export}


def _indexes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    users = {r["user_id"]: r["user_idx"] for r in _table(root, "vocab_users", {"ds": DS})}
    items = {r["item_id"]: r["item_idx"] for r in _table(root, "vocab_items", {"ds": DS})}
    return users, items


def _train_events(chain: dict[str, Any]) -> dict[int, list[tuple[int, int, tuple]]]:
    """Per user index: (epoch s, item index, expected context) of each train event."""
    root = chain["root"]
    users, items = _indexes(root)
    vocabulary = _device_vocabulary(chain["rows"], 2)
    by_key = {(r["user_id"], r["item_id"], _moment(r)): r for r in chain["rows"]}
    train = _table(root, "train", {"ds": DS, "protocol": "random_by_user"})
    out: dict[int, list[tuple[int, int, tuple]]] = {}
    for split_row in train:
        row = by_key[(split_row["user_id"], split_row["item_id"], split_row["ts"])]
        out.setdefault(users[row["user_id"]], []).append(
            (
                int(_moment(row).timestamp()),
                items[row["item_id"]],
                _expected_context(row, vocabulary),
            )
        )
    return out


def test_context_vocabulary_and_stats_follow_the_events(chain: dict[str, Any]) -> None:
    rows = chain["rows"]
    vocabulary = _device_vocabulary(rows, 2)
    assert "tv" not in vocabulary and len(vocabulary) == 3
    stored = {
        r["value"]: r["value_index"]
        for r in _table(chain["root"], "feature_vocab", {"ds": DS})
        if r["entity"] == "context" and r["feature"] == "device"
    }
    assert stored == vocabulary
    stats = FeaturesManifest.read(chain["root"], DS).features or {}
    device = stats["context.device"]
    with_device = sum("device" in r for r in rows)
    assert (device.rows_with_value, device.rows_missing) == (with_device, len(rows) - with_device)
    assert device.size == max(vocabulary.values()) + 1 and device.vocabulary == 3
    assert (stats["context.hour"].size, stats["context.day"].size) == (25, 8)
    assert ExportManifest.read(chain["root"], DS).context == ["device", "hour", "day"]


def test_every_sample_carries_its_own_events_context(chain: dict[str, Any]) -> None:
    root, expected = chain["root"], _train_events(chain)
    partition = {"ds": DS, "protocol": "random_by_user"}
    positives = Counter((u, i, c) for u, events in expected.items() for _, i, c in events)
    pointwise = _table(root, "samples_pointwise", partition)
    got = Counter(
        (r["user_idx"], r["item_idx"], tuple(r["context_idx"])) for r in pointwise if r["label"]
    )
    assert got == positives
    # A sampled row carries the context of the interaction it was drawn for.
    sampled = Counter((r["user_idx"], tuple(r["context_idx"])) for r in pointwise if not r["label"])
    drawn_for = Counter()
    for (user, _, context), n in positives.items():
        drawn_for[(user, context)] += NEGATIVES * n
    assert sampled == drawn_for
    pairwise = _table(root, "samples_pairwise", partition)
    assert Counter((r["user_idx"], r["item_idx"], tuple(r["context_idx"])) for r in pairwise) == (
        positives
    )
    # Sequence windows: the target's context, found by its own (user, time, item).
    by_moment = {(u, t, i): c for u, events in expected.items() for t, i, c in events}
    for r in _table(root, "samples_sequence", partition):
        moment = int(r["ts"].timestamp())
        assert tuple(r["context_idx"]) == by_moment[(r["user_idx"], moment, r["item_idx"])]


def test_last_context_is_each_users_latest_train_event(chain: dict[str, Any]) -> None:
    root, expected = chain["root"], _train_events(chain)
    last = {u: max(events)[2] for u, events in expected.items()}
    stored = _table(root, "last_context", {"ds": DS, "protocol": "random_by_user"})
    assert {r["user_idx"]: tuple(r["context_idx"]) for r in stored} == last
    n_users = max(last) + 2  # one user index past the vocabulary: no row, missing
    layout, tables = context_tables(root, DS, "random_by_user", n_users)
    assert [f["name"] for f in layout] == ["device", "hour", "day"]
    for position, name in enumerate(("device", "hour", "day")):
        table = tables[f"context.{name}"]
        assert table.shape == (n_users, 1)
        for user in range(n_users):
            want = last[user][position] if user in last else 0
            assert int(table[user, 0]) == want, (name, user)


def test_a_context_spec_error_names_the_key(tmp_path: Path) -> None:
    files = [CONF_DIR / "base.yaml", CONF_DIR / "local.yaml"]
    with pytest.raises(ConfigError, match=r"features\.context\.hour\.part"):
        load_config(
            files, [f"paths.root={tmp_path}", "features.context.hour={kind: time, part: minute}"]
        )
    with pytest.raises(ConfigError, match=r"features\.context\.device"):
        load_config(files, [f"paths.root={tmp_path}", "features.context.device={kind: multi}"])


# ------------------------------------------------------------------------------ models

FM_MODELS = ("deepfm", "nfm", "wide_deep", "mmoe")
LAYOUT = {"context": [
    {"name": "device", "kind": "categorical", "width": 1, "size": 5},
    {"name": "hour", "kind": "time", "width": 1, "size": 25},
]}  # fmt: skip


def _model(name: str, last: torch.Tensor) -> Any:
    torch.manual_seed(0)
    cls = model_class(name)
    context = ModelContext(
        n_users=4, n_items=6, max_len=4, feature_layout=LAYOUT,
        feature_values={"context.device": last[:, :1], "context.hour": last[:, 1:]},
    )  # fmt: skip
    model = cls(cls.config_class(**model_settings_of(name)), context)
    return model.eval()


@pytest.mark.parametrize("name", FM_MODELS)
def test_factorisation_models_read_the_samples_context_and_else_the_users_last(name: str) -> None:
    last = torch.tensor([[0, 0], [2, 9], [3, 20], [4, 1]])
    model = _model(name, last)
    assert model.reads_context
    users, items = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        # Scoring (no context given) reads each user's last context: the same as giving it.
        scores = model.score_all(Batch(users=users))
        given = model.combine(model.user_side(users, last[users]), model.item_side(items))
        torch.testing.assert_close(scores[torch.arange(3), items], given)
        # Another moment's context moves the score (its fields reach the logit).
        other = last[users].clone()
        other[:, 0] = torch.tensor([3, 4, 2])
        moved = model.combine(model.user_side(users, other), model.item_side(items))
        assert not torch.allclose(moved, given)
    # Training reads the batch's context: a loss with a different context differs.
    batch = Batch(users=users, items=items, labels=torch.ones(3), values=torch.ones(3),
                  context=last[users])  # fmt: skip
    with torch.no_grad():
        assert model.loss(batch) != model.loss(Batch(**{**batch.__dict__, "context": other}))


def test_models_without_context_do_not_read_it() -> None:
    for name in ("deepfm", "bpr_mf"):
        cls = model_class(name)
        bare = cls(cls.config_class(**model_settings_of(name)), ModelContext(n_users=4, n_items=6))
        assert not bare.reads_context, name


def test_din_adds_the_context_to_its_profile() -> None:
    last = torch.tensor([[0, 0], [2, 9], [3, 20], [4, 1]])
    torch.manual_seed(0)
    cls = model_class("din")
    context = ModelContext(
        n_users=4, n_items=6, max_len=4, feature_layout=LAYOUT,
        feature_values={"context.device": last[:, :1], "context.hour": last[:, 1:]},
    )  # fmt: skip
    settings = {"dim": 4, "attention_layers": [4], "mlp_layers": [8], "dropout": 0.0,
                "negatives": 2, "score_chunk_pairs": 5, "history_dropout": 0.0}  # fmt: skip
    model = cls(cls.config_class(**settings), context).eval()
    assert model.reads_context
    users, history = torch.tensor([1, 2, 3]), torch.tensor([[0, 1, 2], [3, 4, 5], [0, 0, 6]])
    items = torch.arange(7)
    with torch.no_grad():
        scores = model.score_all(Batch(users=users, history=history))
        dtype = model.item_emb.weight.dtype
        given = model.candidate_scores(
            history, model._profile(users, dtype, last[users]), model.item_vectors(items)[None]
        )
        torch.testing.assert_close(scores, given)
        other = last[users].clone()
        other[:, 0] = torch.tensor([3, 4, 2])
        moved = model.candidate_scores(
            history, model._profile(users, dtype, other), model.item_vectors(items)[None]
        )
        assert not torch.allclose(moved, given)
