"""The Arrow loader over real Parquet sample files written with pyarrow (no Spark, no mocks).

Row identity: every written row has a distinct ``item_idx`` (its global row number + 1), so a
multiset of (user_idx, item_idx) pairs shows exactly which rows an epoch yielded.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recpipe.data import arrow_loader
from recpipe.data.arrow_loader import (
    ArrowSampleDataset,
    DataFormatError,
    ShardFile,
    ShortReadError,
    make_loader,
)
from recpipe.data.batch import Batch
from recpipe.errors import RecpipeError

N_NEG = 3
SEQ_LEN = 5
T0 = 1_700_000_000


def _lists(values: np.ndarray, pa_type: pa.DataType) -> pa.Array:
    """A list<...> column from a [rows, width] array."""
    rows, width = values.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.ravel(), pa_type))


def sample_table(kind: str, first_row: int, rows: int) -> pa.Table:
    """``rows`` samples of ``kind`` in the export schema; row r has item_idx r + 1 and values
    derived from r, so any row's expected fields can be recomputed from its item_idx."""
    r = np.arange(first_row, first_row + rows, dtype=np.int64)
    columns: dict[str, pa.Array] = {
        "user_idx": pa.array((r % 97).astype(np.int32)),
        "item_idx": pa.array((r + 1).astype(np.int32)),
    }
    if kind == "pairwise":
        negatives = (r[:, None] * 10 + np.arange(N_NEG)[None, :]).astype(np.int32)
        columns["negatives"] = _lists(negatives, pa.int32())
    elif kind == "pointwise":
        columns["label"] = pa.array((r % 2).astype(np.float32))
    else:
        history, history_ts = sequence_values(r)
        columns = {
            "user_idx": columns["user_idx"],
            "history": _lists(history.astype(np.int32), pa.int32()),
            "history_ts": _lists(history_ts, pa.int64()),
            "item_idx": columns["item_idx"],
            "ts": pa.array(T0 * 1_000_000 + r, pa.timestamp("us", tz="UTC")),
        }
    return pa.table(columns)


def sequence_values(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """History (left-padded with 0: row r has r % SEQ_LEN leading zeros) and its timestamps."""
    pos = np.arange(SEQ_LEN)[None, :]
    pad = (r % SEQ_LEN)[:, None]
    history = np.where(pos >= pad, r[:, None] * 100 + pos + 1, 0)
    history_ts = np.where(pos >= pad, T0 + pos, 0).astype(np.int64)
    return history, history_ts


def write_shards(
    folder: Path, kind: str, sizes: Sequence[int], row_group_size: int | None = None
) -> list[ShardFile]:
    """One ``part-*.parquet`` file per size, rows numbered consecutively across files."""
    folder.mkdir(parents=True, exist_ok=True)
    shards, first = [], 0
    for i, rows in enumerate(sizes):
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(sample_table(kind, first, rows), path, row_group_size=row_group_size)
        shards.append(ShardFile(str(path), rows))
        first += rows
    return shards


def written_rows(shards: Sequence[ShardFile]) -> Counter[tuple[int, int]]:
    rows: Counter[tuple[int, int]] = Counter()
    for shard in shards:
        table = pq.read_table(shard.path, columns=["user_idx", "item_idx"])
        rows.update(zip(table["user_idx"].to_pylist(), table["item_idx"].to_pylist(), strict=True))
    return rows


def yielded_rows(batches) -> Counter[tuple[int, int]]:
    rows: Counter[tuple[int, int]] = Counter()
    for batch in batches:
        rows.update(zip(batch.users.tolist(), batch.items.tolist(), strict=True))
    return rows


def item_order(batches) -> list[int]:
    return [item for batch in batches for item in batch.items.tolist()]


@pytest.fixture
def pairwise(tmp_path: Path) -> list[ShardFile]:
    """Four pairwise files of uneven sizes (2,500 rows in all)."""
    return write_shards(tmp_path / "pairwise", "pairwise", [700, 500, 900, 400])


# --- every row exactly once -------------------------------------------------------------------


def test_every_row_once_single_rank(pairwise: list[ShardFile]) -> None:
    dataset = ArrowSampleDataset(pairwise, "pairwise", batch_size=128, shuffle_buffer=300)
    batches = list(dataset)
    assert yielded_rows(batches) == written_rows(pairwise)
    assert [len(b) for b in batches] == [128] * 19 + [2500 - 19 * 128]
    assert dataset.rows_for_rank() == 2500
    assert dataset.batches_for_rank() == len(batches)


def test_two_ranks_split_files_disjointly(pairwise: list[ShardFile]) -> None:
    per_rank = []
    for rank in (0, 1):
        dataset = ArrowSampleDataset(
            pairwise, "pairwise", batch_size=100, rank=rank, world_size=2, shuffle_buffer=256
        )
        rows = yielded_rows(dataset)
        # File i belongs to rank i % 2.
        assert rows == written_rows(pairwise[rank::2])
        assert dataset.rows_for_rank() == sum(s.rows for s in pairwise[rank::2])
        assert sum(rows.values()) == dataset.rows_for_rank()
        per_rank.append(rows)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert per_rank[0] + per_rank[1] == written_rows(pairwise)


@pytest.mark.parametrize("shuffle_buffer", [0, 256])
def test_workers_through_make_loader(pairwise: list[ShardFile], shuffle_buffer: int) -> None:
    dataset = ArrowSampleDataset(
        pairwise, "pairwise", batch_size=128, shuffle_buffer=shuffle_buffer
    )
    batches = list(make_loader(dataset, num_workers=2))
    assert all(type(b) is Batch for b in batches)
    assert all(b.users.dtype == b.items.dtype == b.negatives.dtype == torch.int64 for b in batches)
    assert yielded_rows(batches) == written_rows(pairwise)
    # Worker 0 reads files 0 and 2 (1,600 rows), worker 1 files 1 and 3 (900 rows): each
    # batches its own rows, so each has one short last batch.
    sizes = sorted(len(b) for b in batches)
    assert sizes[:2] == [900 % 128, 1600 % 128] and set(sizes[2:]) == {128}
    assert dataset.batches_for_rank(num_workers=2) == len(batches)


def test_workers_and_ranks_together(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "p", "pairwise", [300] * 8)
    seen: Counter[tuple[int, int]] = Counter()
    for rank in (0, 1):
        dataset = ArrowSampleDataset(shards, "pairwise", 64, rank=rank, world_size=2)
        seen += yielded_rows(make_loader(dataset, num_workers=2))
    assert seen == written_rows(shards)


def test_batches_span_chunks_and_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small decode chunks and row groups so that batches and the buffer straddle both.
    monkeypatch.setattr(arrow_loader, "READ_BATCH_ROWS", 37)
    shards = write_shards(tmp_path / "s", "sequence", [250, 0, 301], row_group_size=90)
    for shuffle_buffer in (0, 50, 100_000):
        dataset = ArrowSampleDataset(shards, "sequence", 64, shuffle_buffer=shuffle_buffer)
        batches = list(dataset)
        assert yielded_rows(batches) == written_rows(shards)
        assert_sequence_fields(batches)


# --- field decoding ---------------------------------------------------------------------------


def test_pairwise_fields(pairwise: list[ShardFile]) -> None:
    batch = next(iter(ArrowSampleDataset(pairwise, "pairwise", 5, shuffle_buffer=0)))
    assert batch.users.tolist() == [0, 1, 2, 3, 4]
    assert batch.items.tolist() == [1, 2, 3, 4, 5]
    assert batch.negatives.shape == (5, N_NEG) and batch.negatives.dtype == torch.int64
    assert batch.negatives[2].tolist() == [20, 21, 22]
    assert batch.labels is None and batch.history is None


def test_pointwise_fields(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "p", "pointwise", [10, 10])
    batches = list(ArrowSampleDataset(shards, "pointwise", 8, shuffle_buffer=64))
    for batch in batches:
        assert batch.labels.dtype == torch.float32 and batch.items.dtype == torch.int64
        rows = batch.items - 1
        assert torch.equal(batch.labels, (rows % 2).float())
        assert torch.equal(batch.users, rows % 97)
        assert batch.negatives is None


def assert_sequence_fields(batches: Sequence[Batch], with_ts: bool = False) -> None:
    for batch in batches:
        rows = (batch.items - 1).numpy()
        history, history_ts = sequence_values(rows)
        assert batch.history.shape == (len(batch), SEQ_LEN) and batch.history.dtype == torch.int64
        assert np.array_equal(batch.history.numpy(), history)
        assert torch.equal(batch.users, torch.from_numpy(rows % 97))
        if with_ts:
            assert np.array_equal(batch.history_ts.numpy(), history_ts)
        else:
            assert batch.history_ts is None


@pytest.mark.parametrize("read_history_ts", [False, True])
def test_sequence_fields(tmp_path: Path, read_history_ts: bool) -> None:
    shards = write_shards(tmp_path / "s", "sequence", [12, 9])
    dataset = ArrowSampleDataset(
        shards, "sequence", 4, shuffle_buffer=0, read_history_ts=read_history_ts
    )
    batches = list(dataset)
    assert_sequence_fields(batches, with_ts=read_history_ts)
    first = batches[0]
    # Row 3 has 3 leading zeros: the padding is on the left, the latest item last.
    assert first.history[3].tolist() == [0, 0, 0, 304, 305]
    if read_history_ts:
        assert first.history_ts[3].tolist() == [0, 0, 0, T0 + 3, T0 + 4]


def test_fields_survive_worker_transfer(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "s", "sequence", [40, 40])
    dataset = ArrowSampleDataset(shards, "sequence", 16, read_history_ts=True)
    batches = list(make_loader(dataset, num_workers=2))
    assert all(type(b) is Batch for b in batches)
    assert_sequence_fields(batches, with_ts=True)
    assert sum(len(b) for b in batches) == 80


def test_ragged_list_column_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    ragged = pa.array([[1, 2, 3], [4, 5], [6, 7, 8]], pa.list_(pa.int32()))
    ids = pa.array([1, 2, 3], pa.int32())
    pq.write_table(pa.table({"user_idx": ids, "item_idx": ids, "negatives": ragged}), path)
    with pytest.raises(DataFormatError, match="fixed-length list of 3"):
        list(ArrowSampleDataset([ShardFile(str(path), 3)], "pairwise", 2))


# --- shuffling --------------------------------------------------------------------------------


def order(shards: Sequence[ShardFile], epoch: int, seed: int = 0, **kwargs) -> list[int]:
    dataset = ArrowSampleDataset(shards, "pairwise", 100, shuffle_buffer=400, seed=seed)
    dataset.set_epoch(epoch)
    return item_order(make_loader(dataset, **kwargs))


def test_same_seed_and_epoch_same_order(pairwise: list[ShardFile]) -> None:
    first = order(pairwise, epoch=3)
    assert order(pairwise, epoch=3) == first
    assert first != sorted(first)  # actually shuffled
    assert order(pairwise, epoch=4) != first
    assert order(pairwise, epoch=3, seed=1) != first
    assert sorted(order(pairwise, epoch=4)) == sorted(first)


def test_epoch_reaches_worker_processes(pairwise: list[ShardFile]) -> None:
    epoch1 = order(pairwise, epoch=1, num_workers=2)
    assert order(pairwise, epoch=1, num_workers=2) == epoch1
    assert order(pairwise, epoch=2, num_workers=2) != epoch1


def test_shuffle_mixes_beyond_a_file(pairwise: list[ShardFile]) -> None:
    # The file order changes per epoch and rows move across batches, not only within them.
    items = order(pairwise, epoch=0)
    first_batch = items[:100]
    assert max(first_batch) - min(first_batch) > 100


def test_no_shuffle_keeps_file_order(pairwise: list[ShardFile]) -> None:
    for epoch in (0, 1):
        dataset = ArrowSampleDataset(pairwise, "pairwise", 128, shuffle_buffer=0)
        dataset.set_epoch(epoch)
        batches = list(dataset)
        assert item_order(batches) == list(range(1, 2501))
        # Batches run across file borders; only the very last one is short.
        assert [len(b) for b in batches] == [128] * 19 + [68]


def test_drop_last(pairwise: list[ShardFile]) -> None:
    for shuffle_buffer in (0, 300):
        dataset = ArrowSampleDataset(
            pairwise, "pairwise", 128, shuffle_buffer=shuffle_buffer, drop_last=True
        )
        batches = list(dataset)  # the dropped rows count as read: no ShortReadError
        assert [len(b) for b in batches] == [128] * 19
        assert dataset.batches_for_rank() == 19
        assert sum(yielded_rows(batches).values()) == 19 * 128


# --- accounting -------------------------------------------------------------------------------


def test_manifest_with_more_rows_than_the_file(pairwise: list[ShardFile]) -> None:
    short = ShardFile(pairwise[1].path, pairwise[1].rows + 10)
    files = [pairwise[0], short, *pairwise[2:]]
    with pytest.raises(ShortReadError, match="manifest has 510 rows, read 500") as caught:
        list(ArrowSampleDataset(files, "pairwise", 128))
    assert pairwise[1].path in str(caught.value)
    assert pairwise[0].path not in str(caught.value)
    assert isinstance(caught.value, RecpipeError)


def test_file_with_more_rows_than_the_manifest(pairwise: list[ShardFile]) -> None:
    files = [ShardFile(pairwise[0].path, 699), *pairwise[1:]]
    with pytest.raises(ShortReadError, match="manifest has 699 rows, read 700"):
        list(ArrowSampleDataset(files, "pairwise", 128, shuffle_buffer=0))


def test_rewritten_short_file(pairwise: list[ShardFile]) -> None:
    # The file was replaced after the manifest was written (e.g. a truncated re-export).
    pq.write_table(sample_table("pairwise", 700, 123), pairwise[1].path)
    with pytest.raises(ShortReadError) as caught:
        list(ArrowSampleDataset(pairwise, "pairwise", 128, drop_last=True))
    assert f"{pairwise[1].path}: manifest has 500 rows, read 123" in str(caught.value)


def test_short_file_in_a_worker_process(pairwise: list[ShardFile]) -> None:
    pq.write_table(sample_table("pairwise", 700, 123), pairwise[3].path)
    dataset = ArrowSampleDataset(pairwise, "pairwise", 128)
    with pytest.raises(ShortReadError) as caught:
        list(make_loader(dataset, num_workers=2))
    assert pairwise[3].path in str(caught.value)
    assert "manifest has 400 rows, read 123" in str(caught.value)


def test_abandoned_epoch_stops_the_reader_thread(
    pairwise: list[ShardFile], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arrow_loader, "READ_BATCH_ROWS", 10)  # many chunks: the reader waits
    before = threading.active_count()
    batches = iter(ArrowSampleDataset(pairwise, "pairwise", 16, shuffle_buffer=0))
    next(batches)
    assert threading.active_count() == before + 1
    batches.close()  # e.g. a training loop that breaks out of the epoch
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before


# --- validation -------------------------------------------------------------------------------


def test_file_count_must_be_a_multiple_of_world_size(pairwise: list[ShardFile]) -> None:
    with pytest.raises(ValueError, match=r"3 sample files .* world_size 2"):
        ArrowSampleDataset(pairwise[:3], "pairwise", 8, world_size=2)
    with pytest.raises(ValueError, match="rank 2 is out of range for world_size 2"):
        ArrowSampleDataset(pairwise, "pairwise", 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="unknown sample kind"):
        ArrowSampleDataset(pairwise, "triplet", 8)  # type: ignore[arg-type]


def test_constructor_does_no_io(tmp_path: Path) -> None:
    missing = [ShardFile(str(tmp_path / "nope.parquet"), 5)]
    dataset = ArrowSampleDataset(missing, "pairwise", 8)
    assert dataset.rows_for_rank() == 5
    with pytest.raises(FileNotFoundError):
        list(dataset)


def test_shards_at_a_uri_are_read_through_their_file_system(tmp_path: Path) -> None:
    """Shards named by a viewfs URI (mounted onto a local folder) are opened through the
    pyarrow file system recpipe.storage resolves, in the main process and in workers."""
    from recpipe import storage

    local = write_shards(tmp_path / "samples", "pairwise", [300, 200])
    storage.configure(
        {"fs.viewfs.mounttable.loader-test.link./samples": (tmp_path / "samples").as_uri()}
    )
    shards = [ShardFile(f"viewfs://loader-test/samples/{Path(s.path).name}", s.rows) for s in local]
    for workers in (0, 2):
        dataset = ArrowSampleDataset(shards, "pairwise", 64)
        assert yielded_rows(make_loader(dataset, num_workers=workers)) == written_rows(local)
