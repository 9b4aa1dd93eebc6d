"""Vocabulary sizes from Parquet footers, without reading the index column whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from recpipe.tables import column_max


def _write(folder: Path, name: str, values: list[int | None], statistics: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user_idx": pa.array(values, pa.int32()), "x": pa.array([1] * len(values))})
    pq.write_table(table, folder / name, row_group_size=3, write_statistics=statistics)


def test_max_from_statistics_equals_the_values_max(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    everything: list[int] = []
    for n in range(4):
        values = rng.integers(1, 10_000, size=11).tolist()
        everything += values
        _write(tmp_path, f"part-{n}.parquet", values, statistics=True)
    _write(tmp_path, "part-empty.parquet", [], statistics=True)
    dataset = pads.dataset(tmp_path)
    assert column_max(dataset, "user_idx") == max(everything)


def test_files_without_statistics_are_streamed(tmp_path: Path) -> None:
    _write(tmp_path, "a.parquet", [3, 9, 4, 7], statistics=True)
    _write(tmp_path, "b.parquet", [12, None, 5, 2, 40, 1, 6], statistics=False)
    _write(tmp_path, "c.parquet", [None, None], statistics=True)
    dataset = pads.dataset(tmp_path)
    assert column_max(dataset, "user_idx") == 40
    # The statistics path reads no rows: a file whose data pages are destroyed (footer intact)
    # still gives its maximum, though reading its rows fails.
    damaged = tmp_path / "a.parquet"
    column = pq.ParquetFile(damaged).metadata.row_group(0).column(0)
    data = bytearray(damaged.read_bytes())
    start = column.data_page_offset
    data[start : start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    damaged.write_bytes(bytes(data))
    with pytest.raises(OSError):
        pq.read_table(damaged)
    assert column_max(pads.dataset(tmp_path), "user_idx") == 40


@pytest.mark.parametrize("values", [[], [None]])
def test_no_values_is_zero(tmp_path: Path, values: list) -> None:
    _write(tmp_path, "a.parquet", values, statistics=True)
    assert column_max(pads.dataset(tmp_path), "user_idx") == 0
