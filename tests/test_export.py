"""The ``export`` stage: samples checked against the train split read back independently."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import build_config, read_manifest, read_rows, run_chain, write_jsonl
from pyspark.sql import SparkSession

from recpipe.config import Config
from recpipe.etl.export import NegativeSampler
from recpipe.stages.export import ExportMismatchError, export_shards, run_export
from recpipe.stages.train import build_spec

DS = "2026-11-20"
N_USERS, N_ITEMS = 9, 30


def events() -> list[dict]:
    """Users with 1..25 distinct items each, distinct timestamps (one user with a single item)."""
    rng = random.Random(7)
    rows = []
    for user in range(N_USERS):
        count = 1 if user == 0 else rng.randint(3, 25)
        for k, item in enumerate(rng.sample(range(N_ITEMS), count)):
            ts = f"{DS}T{user:02d}:{k:02d}:00Z"
            row = {"user_id": f"u{user}", "item_id": f"i{item}", "event_type": "view", "ts": ts}
            if k % 3:  # a value (a rating) on two events in three
                row["value"] = (user + k) % 5 + 1
            rows.append(row)
    return rows


def export_config(root: Path) -> Config:
    """The module's settings: windows of 4 (sequence) and 6 (bag) items, 2 ranks."""
    return build_config(
        root,
        f"paths.raw_events={root / 'raw' / 'events.jsonl'}",
        "split.protocols=[leave_last_out,random_by_user]",
        "export.negatives=3",
        "export.max_len=4",
        "export.bag_max_len=6",
        "train.processes=2",
        "export.files_per_process=2",
    )


@pytest.fixture(scope="module")
def exported(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    write_jsonl(root / "raw" / "events.jsonl", events())
    config = export_config(root)
    run_chain(spark, config, DS)
    manifest = run_export(spark, config, DS)
    assert manifest["status"] == "ok"
    return root


def train_sequences(root: Path, protocol: str) -> dict[int, list[int]]:
    """Each user's train items ordered by (ts, item), from the split read with pyarrow."""
    by_user: dict[int, list[tuple]] = defaultdict(list)
    for row in read_rows(root, "train", DS, protocol):
        by_user[row["user_idx"]].append((row["ts"], row["item_idx"]))
    return {user: [item for _, item in sorted(pairs)] for user, pairs in by_user.items()}


@pytest.mark.parametrize("protocol", ["leave_last_out", "random_by_user"])
def test_pairwise_rows_are_the_train_split_with_unseen_negatives(exported, protocol) -> None:
    sequences = train_sequences(exported, protocol)
    rows = read_rows(exported, "samples_pairwise", DS, protocol)
    expected = Counter((u, i) for u, items in sequences.items() for i in items)
    assert Counter((r["user_idx"], r["item_idx"]) for r in rows) == expected
    trained = {item for items in sequences.values() for item in items}
    for row in rows:
        assert len(row["negatives"]) == 3
        assert all(1 <= n <= N_ITEMS for n in row["negatives"])
        assert not set(row["negatives"]) & set(sequences[row["user_idx"]])
        assert set(row["negatives"]) <= trained  # never an item only valid or test holds


def test_pointwise_rows_label_train_pairs_and_sampled_negatives(exported) -> None:
    sequences = train_sequences(exported, "leave_last_out")
    rows = read_rows(exported, "samples_pointwise", DS, "leave_last_out")
    positives = Counter((r["user_idx"], r["item_idx"]) for r in rows if r["label"] == 1.0)
    assert positives == Counter((u, i) for u, items in sequences.items() for i in items)
    negatives = [r for r in rows if r["label"] == 0.0]
    assert len(negatives) == 3 * sum(positives.values())
    assert all(r["item_idx"] not in sequences[r["user_idx"]] for r in negatives)
    # Each positive carries its event's value (NaN where none); sampled rows carry NaN.
    values = {
        (r["user_idx"], r["item_idx"]): r["value"]
        for r in read_rows(exported, "train", DS, "leave_last_out")
    }
    assert any(v is not None for v in values.values()) and None in values.values()
    for row in rows:
        value = values.get((row["user_idx"], row["item_idx"])) if row["label"] else None
        if value is None:
            assert np.isnan(row["value"]), row
        else:
            assert row["value"] == value, row


@pytest.mark.parametrize(("kind", "max_len"), [("sequence", 4), ("bag", 6)])
def test_windows_cover_every_target_once(exported, kind: str, max_len: int) -> None:
    """Sequence windows are export.max_len long, bags export.bag_max_len; both step by their
    length, so each position trains once."""
    sequences = train_sequences(exported, "leave_last_out")
    rows = read_rows(exported, f"samples_{kind}", DS, "leave_last_out")
    seen_targets: Counter = Counter()
    for row in rows:
        seq = sequences[row["user_idx"]]
        history = row["history"]
        assert len(history) == max_len and len(row["history_ts"]) == max_len
        real = [item for item in history if item != 0]
        assert history[: max_len - len(real)] == [0] * (max_len - len(real))  # left padding
        # History + target is a contiguous run of the user's sequence.
        run = [*real, row["item_idx"]]
        starts = [s for s in range(len(seq)) if seq[s : s + len(run)] == run]
        assert starts, (row, seq)
        # Training on every position: the targets of a window are history[1:] + [target].
        seen_targets.update((row["user_idx"], t) for t in [*real[1:], row["item_idx"]])
    expected = Counter((u, i) for u, seq in sequences.items() for i in seq[1:])
    assert seen_targets == expected  # each item after a user's first is a target exactly once
    assert not any(
        len(seq) < 2 and u in {r["user_idx"] for r in rows} for u, seq in sequences.items()
    )


@pytest.mark.parametrize(("model", "max_len"), [("gru4rec", 4), ("mult_vae", 6), ("cdae", 6)])
def test_a_model_reads_histories_as_long_as_its_sample_kind(exported, model, max_len) -> None:
    """Training and scoring read a model's histories at its kind's length (context.max_len):
    a bag model export.bag_max_len items, a sequence model export.max_len."""
    spec = build_spec(export_config(exported), DS, "leave_last_out", model)
    assert spec.context["max_len"] == max_len
    table = "samples_bag" if max_len == 6 else "samples_sequence"
    assert spec.shards and all(f"/{table}/" in path for path, _ in spec.shards), spec.shards


def test_files_and_manifest_counts(exported) -> None:
    manifest = read_manifest(exported, "export", DS)
    assert manifest["files_per_table"] == 4
    assert (manifest["n_users"], manifest["user_index_size"]) == (N_USERS, N_USERS + 1)
    assert manifest["n_items"] == len({e["item_id"] for e in events()})
    for protocol in ("leave_last_out", "random_by_user"):
        for kind in ("pairwise", "pointwise", "sequence", "bag"):
            shards = export_shards(exported, DS, protocol, kind)
            assert len(shards) == 4
            for path, rows in shards:
                assert pq.ParquetFile(path).metadata.num_rows == rows
            table = f"samples_{kind}"
            assert sum(r for _, r in shards) == len(read_rows(exported, table, DS, protocol))


def test_shards_are_checked_against_the_commit(exported) -> None:
    """Training reads only the shard files export committed: a rewritten one is refused."""
    path, _ = export_shards(exported, DS, "leave_last_out", "pairwise")[0]
    original = Path(path).read_bytes()
    pq.write_table(pq.read_table(path), path)  # same rows, written by another writer
    try:
        with pytest.raises(ExportMismatchError, match=r"is not the file export wrote: re-run"):
            export_shards(exported, DS, "leave_last_out", "pairwise")
    finally:
        Path(path).write_bytes(original)
    assert export_shards(exported, DS, "leave_last_out", "pairwise")[0][0] == path


def test_rerun_is_identical(spark: SparkSession, exported) -> None:
    before = read_rows(exported, "samples_pairwise", DS, "random_by_user")
    config = build_config(
        exported,
        "split.protocols=[random_by_user]",
        "export.negatives=3",
        "export.max_len=4",
        "train.processes=2",
        "export.files_per_process=2",
        "export.kinds=[pairwise]",
    )
    run_export(spark, config, DS)
    after = read_rows(exported, "samples_pairwise", DS, "random_by_user")
    key = lambda r: (r["user_idx"], r["item_idx"], tuple(r["negatives"]))  # noqa: E731
    assert sorted(map(key, before)) == sorted(map(key, after))


def test_uniform_sampler_draws_only_items_with_train_interactions() -> None:
    """Items 2 and 5 occur only outside train (cold items): never a negative, so no model
    learns from the split that they are never chosen; a user who has every trained item has
    no negative at all."""
    trained = np.array([False, True, False, True, True, False, True])
    sampler = NegativeSampler(6, None, seed=3, trained=trained)
    draws = np.concatenate([sampler.draw(user, np.array([1]), 500) for user in range(5)])
    assert set(np.unique(draws).tolist()) == {3, 4, 6}
    assert set(sampler.draw(9, np.array([1, 3, 4]), 50).tolist()) == {6}  # one left
    with pytest.raises(ValueError, match="interacted with every item"):
        sampler.draw(9, np.array([1, 3, 4, 6, 2]), 1)
    untrained = NegativeSampler(6, None, seed=3).draw(0, np.array([1]), 500)
    assert {2, 5} <= set(untrained.tolist())  # without the mask every item is drawn


def test_popularity_sampler_follows_counts_and_skips_positives() -> None:
    weights = np.array([0, 1, 2, 4, 8, 16, 0], dtype=float)  # item 6 never seen in train
    sampler = NegativeSampler(6, weights, seed=1)
    draws = np.concatenate([sampler.draw(user, np.array([5]), 2000) for user in range(10)])
    counts = np.bincount(draws, minlength=7)
    assert counts[0] == counts[5] == counts[6] == 0  # padding, the positive, zero-weight item
    shares = counts[1:5] / counts[1:5].sum()
    assert np.allclose(shares, weights[1:5] / weights[1:5].sum(), atol=0.02)
    again = NegativeSampler(6, weights, seed=1).draw(3, np.array([5]), 50)
    assert np.array_equal(again, NegativeSampler(6, weights, seed=1).draw(3, np.array([5]), 50))


def test_large_tables_get_more_files_of_near_equal_rows(spark: SparkSession, exported) -> None:
    """export.rows_per_file below a table's size: more files (a multiple of the processes),
    none far above the target, every rank's share within a few rows of the other's."""
    before = export_shards(exported, DS, "random_by_user", "pairwise")
    total = sum(rows for _, rows in before)
    target = -(-total // 5)  # five files' worth
    config = build_config(
        exported, "split.protocols=[random_by_user]", "export.negatives=3",
        "export.kinds=[pairwise]", "train.processes=2", "export.files_per_process=1",
        f"export.rows_per_file={target}",
    )  # fmt: skip
    assert run_export(spark, config, DS)["status"] == "ok"
    shards = export_shards(exported, DS, "random_by_user", "pairwise")
    assert len(shards) == 6  # 2 processes x ceil(5 / 2)
    rows = [r for _, r in shards]
    assert sum(rows) == total
    for path, count in shards:
        assert pq.ParquetFile(path).metadata.num_rows == count
    assert max(rows) - min(rows) <= 8 and max(rows) <= target
    per_rank = [sum(rows[rank::2]) for rank in range(2)]
    assert abs(per_rank[0] - per_rank[1]) <= 8
