"""The Petastorm loader against the Arrow loader and against the files themselves."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recpipe.data.arrow_loader import ArrowSampleDataset, DataFormatError, ShardFile, ShortReadError
from recpipe.data.batch import Batch
from recpipe.data.petastorm_loader import PetastormSampleDataset, mitigate_pyarrow_cve
from recpipe.schema import HISTORY, HISTORY_TS, ITEM_IDX, LABEL, NEGATIVES, TS, USER_IDX

WIDTH = 4  # negatives per pairwise row, history length per sequence row


def _fixed_lists(values: np.ndarray) -> pa.Array:
    rows, width = values.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


def write_samples(
    folder: Path, kind: str, rows_per_file: list[int], seed: int = 0
) -> list[ShardFile]:
    """Sample files of ``kind`` with distinct (user, item) per row and row groups of 16 rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, first = [], 0
    for index, rows in enumerate(rows_per_file):
        ids = np.arange(first, first + rows, dtype=np.int32)
        first += rows
        columns: dict[str, pa.Array] = {
            USER_IDX: pa.array(ids),
            ITEM_IDX: pa.array(ids * 7 + 1),
            TS: pa.array(ids.astype(np.int64) * 1_000_000, pa.timestamp("us")),
        }
        if kind == "pairwise":
            columns[NEGATIVES] = _fixed_lists(rng.integers(1, 500, (rows, WIDTH), dtype=np.int32))
        elif kind == "pointwise":
            columns[LABEL] = pa.array(rng.integers(0, 2, rows).astype(np.float32))
        else:
            columns[HISTORY] = _fixed_lists(rng.integers(0, 500, (rows, WIDTH), dtype=np.int32))
            columns[HISTORY_TS] = _fixed_lists(rng.integers(0, 10**9, (rows, WIDTH)))
        path = folder / f"part-{index:05d}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=16)
        files.append(ShardFile(str(path), rows))
    return files


def rows_of(batches: list[Batch]) -> list[tuple[int, ...]]:
    """Every row of every batch as a tuple of its values, in order."""
    out = []
    for batch in batches:
        parts = [batch.users[:, None], batch.items[:, None]]
        for extra in (batch.negatives, batch.history):
            if extra is not None:
                parts.append(extra)
        if batch.labels is not None:
            parts.append(batch.labels[:, None].long())
        out.extend(tuple(row) for row in torch.cat(parts, 1).tolist())
    return out


def epoch(dataset: ArrowSampleDataset, number: int = 0) -> list[Batch]:
    dataset.set_epoch(number)
    return list(dataset)


@pytest.mark.parametrize("kind", ["pairwise", "pointwise", "sequence"])
def test_unshuffled_batches_equal_the_arrow_loaders(tmp_path, kind) -> None:
    files = write_samples(tmp_path, kind, [50, 37, 64, 21])
    for rank in range(2):
        options = {"rank": rank, "world_size": 2, "shuffle_buffer": 0}
        ours = epoch(PetastormSampleDataset(files, kind, 8, **options))
        arrow = epoch(ArrowSampleDataset(files, kind, 8, **options))
        assert [len(b) for b in ours] == [len(b) for b in arrow]
        for a, b in zip(ours, arrow, strict=True):
            for name in ("users", "items", "labels", "negatives", "history"):
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None) == (y is None), name
                if x is not None:
                    assert x.dtype == y.dtype and torch.equal(x, y), name
        dataset = PetastormSampleDataset(files, kind, 8, **options)
        assert len(ours) == dataset.batches_for_rank()


def test_shuffled_epochs_hold_every_row_once_reproducibly(tmp_path) -> None:
    files = write_samples(tmp_path, "pairwise", [100, 90, 80, 70])
    by_rank = []
    for rank in range(2):
        dataset = PetastormSampleDataset(files, "pairwise", 16, rank=rank, world_size=2,
                                         shuffle_buffer=40, seed=5)  # fmt: skip
        unshuffled = PetastormSampleDataset(files, "pairwise", 16, rank=rank, world_size=2,
                                            shuffle_buffer=0)  # fmt: skip
        expected = Counter(rows_of(epoch(unshuffled)))
        first, again, second = (rows_of(epoch(dataset, n)) for n in (0, 0, 1))
        assert Counter(first) == Counter(second) == expected  # each row exactly once
        assert first == again  # the same epoch replays the same order (resume relies on it)
        assert first != second and first != rows_of(epoch(unshuffled))
        by_rank.append({row[0] for row in first})
    assert not by_rank[0] & by_rank[1]  # ranks read disjoint files
    assert len(by_rank[0] | by_rank[1]) == 340


def test_a_short_file_fails_the_epoch(tmp_path) -> None:
    files = write_samples(tmp_path, "pairwise", [40, 30])
    claimed = [files[0], ShardFile(files[1].path, 31)]  # the manifest says one more row
    dataset = PetastormSampleDataset(claimed, "pairwise", 8, shuffle_buffer=16)
    with pytest.raises(ShortReadError, match="returned 70 rows this epoch, the manifest has 71"):
        epoch(dataset)


class _EndsEarly:
    """Petastorm's reader, but the epoch ends after ``keep`` row groups (as its thread pool
    has been measured to do), without any error."""

    def __init__(self, reader, keep: int) -> None:
        self.reader, self.keep = reader, keep

    def __iter__(self):
        for index, row_group in enumerate(self.reader):
            if index == self.keep:
                return
            yield row_group

    def stop(self) -> None:
        self.reader.stop()

    def join(self) -> None:
        self.reader.join()


@pytest.mark.parametrize("keep", [0, 2])
def test_a_silently_short_epoch_raises(tmp_path, keep) -> None:
    files = write_samples(tmp_path, "sequence", [64, 48])
    dataset = PetastormSampleDataset(files, "sequence", 8, shuffle_buffer=16)
    real = dataset.make_batch_reader
    dataset.make_batch_reader = lambda *a, **k: _EndsEarly(real(*a, **k), keep)
    with pytest.raises(ShortReadError, match=f"returned {16 * keep} rows this epoch"):
        epoch(dataset)


def test_thread_pool_epochs_are_complete_or_fail_loudly(tmp_path) -> None:
    files = write_samples(tmp_path, "pairwise", [160, 160])
    expected = Counter(rows_of(epoch(PetastormSampleDataset(files, "pairwise", 16,
                                                            shuffle_buffer=0))))  # fmt: skip
    dataset = PetastormSampleDataset(files, "pairwise", 16, pool="thread", workers=4,
                                     shuffle_buffer=32)  # fmt: skip
    outcomes = Counter()
    for number in range(25):
        try:
            rows = rows_of(epoch(dataset, number))
        except ShortReadError:
            outcomes["loud"] += 1
            continue
        assert Counter(rows) == expected  # never a silent partial epoch
        outcomes["complete"] += 1
    assert sum(outcomes.values()) == 25


def test_ragged_list_columns_are_refused(tmp_path) -> None:
    path = tmp_path / "ragged.parquet"
    table = pa.table({USER_IDX: pa.array([1, 2], pa.int32()),
                      ITEM_IDX: pa.array([3, 4], pa.int32()),
                      NEGATIVES: pa.array([[1, 2], [3]], pa.list_(pa.int32()))})  # fmt: skip
    pq.write_table(table, path)
    dataset = PetastormSampleDataset([ShardFile(str(path), 2)], "pairwise", 2, shuffle_buffer=0)
    with pytest.raises(DataFormatError, match="one fixed width"):
        epoch(dataset)


def test_petastorm_files_pass_through_the_pyarrow_cve_mitigation(tmp_path) -> None:
    assert mitigate_pyarrow_cve() is (pa.__version__ < "14.0.1")
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("unpickled",))

    metadata = {b"ARROW:extension:name": b"arrow.py_extension_type",
                b"ARROW:extension:metadata": pickle.dumps(Payload())}  # fmt: skip
    schema = pa.schema([pa.field("x", pa.int64(), metadata=metadata)])
    path = tmp_path / "evil.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}).cast(schema), path)
    with pytest.raises(Exception, match=r"(?i)disallowed|arbitrary code|pyarrow_hotfix|unpickl"):
        pq.read_table(path)
    assert not marker.exists()


def test_sample_paths_become_petastorm_urls(tmp_path, monkeypatch) -> None:
    from recpipe import storage
    from recpipe.data.petastorm_loader import _dataset_source

    monkeypatch.chdir(tmp_path)
    # Relative paths are made absolute and '=' stays unquoted (Petastorm does not unquote).
    urls, _ = _dataset_source(["lake/ds=2026-11-20/part-0.parquet"])
    assert urls == [f"file://{tmp_path}/lake/ds=2026-11-20/part-0.parquet"]
    # A viewfs location is named by its mount's target, read with recpipe's own file system.
    storage.configure({"fs.viewfs.mounttable.urls-test.link./lake": (tmp_path / "x").as_uri()})
    urls, _ = _dataset_source(["viewfs://urls-test/lake/ds=2026-11-20/part-0.parquet"])
    assert urls == [f"file://{tmp_path}/x/ds=2026-11-20/part-0.parquet"]


@pytest.mark.parametrize("pool", ["dummy", "process"])
def test_samples_at_a_uri_read_through_recpipe_storage(tmp_path, pool) -> None:
    """Shards named by a viewfs URI (mounted onto a local folder) read as the same rows; the
    process pool gets the file system pickled."""
    from recpipe import storage

    files = write_samples(tmp_path / "samples", "pairwise", [40, 24])
    storage.configure({"fs.viewfs.mounttable.uri-test.link./s": (tmp_path / "samples").as_uri()})
    remote = [ShardFile(f"viewfs://uri-test/s/{Path(f.path).name}", f.rows) for f in files]
    options = {"shuffle_buffer": 0, "pool": pool, "workers": 2}
    # Counted, not in order: two pool workers hand over row groups as they finish them.
    expected = Counter(rows_of(epoch(PetastormSampleDataset(files, "pairwise", 8, **options))))
    got = Counter(rows_of(epoch(PetastormSampleDataset(remote, "pairwise", 8, **options))))
    assert got == expected and sum(expected.values()) == 64
