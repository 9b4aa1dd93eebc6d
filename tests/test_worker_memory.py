"""Score blocks sized by the executors' Python worker memory; what cannot fit fails first."""

from __future__ import annotations

import pytest

from recpipe.config import ConfigError
from recpipe.errors import BlockTooLargeError
from recpipe.scoring.memory import WORKER_BASE_MIB, fitted_block_mib, parse_mib, worker_memory

MEMORY = "spark.executor.pyspark.memory"


@pytest.mark.parametrize(
    ("text", "mib"), [("512m", 512), ("2g", 2048), ("2G", 2048), ("1024", 1024),
                      ("1t", 1024 * 1024), ("2048k", 2), ("3gb", 3072)],
)  # fmt: skip
def test_spark_memory_sizes_in_mib(text: str, mib: int) -> None:
    assert parse_mib(text, MEMORY) == mib


def test_a_size_that_is_not_one_names_the_key() -> None:
    with pytest.raises(ConfigError, match=f"{MEMORY}='lots' is not a memory size"):
        parse_mib("lots", MEMORY)


def test_each_core_gets_an_equal_share() -> None:
    assert worker_memory({}) is None
    assert worker_memory({MEMORY: "2g"}).mib == 2048  # one core unless told
    shared = worker_memory({MEMORY: "2g", "spark.executor.cores": "4"})
    assert shared.mib == 512 and "spark.executor.cores=4" in shared.source
    with pytest.raises(ConfigError, match=r"spark\.executor\.cores='0'"):
        worker_memory({MEMORY: "2g", "spark.executor.cores": "0"})


def test_block_is_what_the_worker_has_left() -> None:
    model = 50 * 2**20  # 50 MiB broadcast: 100 MiB while rebuilt
    assert fitted_block_mib({}, 256, "score.block_mib", 10_000, model) == 256
    roomy = {MEMORY: "8g", "spark.executor.cores": "2"}  # 4096 MiB each
    assert fitted_block_mib(roomy, 256, "score.block_mib", 10_000, model) == 256
    tight = {MEMORY: "1g", "spark.executor.cores": "2"}  # 512 MiB each
    left = 512 - WORKER_BASE_MIB - 100
    assert fitted_block_mib(tight, 256, "score.block_mib", 10_000, model) == left == 156


def test_not_one_row_fits_names_both_keys() -> None:
    conf = {MEMORY: "512m", "spark.executor.cores": "1"}
    # 20M items: one user's rows are 20M x 8 bytes x 3 copies = ~458 MiB > 512 - 256.
    with pytest.raises(BlockTooLargeError) as caught:
        fitted_block_mib(conf, 256, "score.block_mib", 20_000_000, 0)
    line = str(caught.value)
    assert "\n" not in line and MEMORY in line and "spark.executor.cores" in line
    assert "512 MiB" in line and "20,000,000 items" in line
