"""The pre-flight checks that a stage's events fit its shuffle partitions' task memory and an
ALS fit's train rows fit its blocks."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import SparkSession

from recpipe.config import ConfigError
from recpipe.task_memory import (
    ALS_ROW_BYTES,
    ROW_BYTES,
    ShufflePartitionsTooFewError,
    TaskMemory,
    als_intermediate_storage,
    check_als_blocks_fit,
    check_rows_per_partition,
    check_shuffle_fits,
    task_memory,
)


def test_a_local_task_shares_the_driver_heap_with_the_other_threads() -> None:
    memory = task_memory({"spark.master": "local[2]", "spark.driver.memory": "1g"}, 2)
    # Spark's unified memory: (heap - 300 MiB reserved) x 0.6, split over 2 running tasks.
    assert memory.mib == int((1024 - 300) * 0.6 / 2) == 217
    assert "spark.driver.memory=1g" in memory.source and "2 task slot" in memory.source


def test_a_cluster_task_shares_its_executor_heap_with_the_executor_cores() -> None:
    conf = {
        "spark.master": "spark://host:7077",
        "spark.driver.memory": "1g",  # not what a cluster task gets
        "spark.executor.memory": "6g",
        "spark.executor.cores": "4",
        "spark.task.cpus": "2",
        "spark.memory.fraction": "0.5",
    }
    assert task_memory(conf, local_slots=16).mib == int((6144 - 300) * 0.5 / 2)
    # local-cluster runs real executor JVMs too: their heap counts, not the driver's.
    conf["spark.master"] = "local-cluster[2,4,6144]"
    assert task_memory(conf, local_slots=16).mib == int((6144 - 300) * 0.5 / 2)


def test_a_bad_memory_setting_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"spark\.driver\.memory='lots'"):
        task_memory({"spark.master": "local[2]", "spark.driver.memory": "lots"}, 2)
    with pytest.raises(ConfigError, match=r"spark\.memory\.fraction='most'"):
        task_memory({"spark.master": "local[2]", "spark.memory.fraction": "most"}, 2)


def test_rows_per_partition_at_the_limit_pass_and_one_more_names_the_key() -> None:
    memory = TaskMemory(1, "test")
    fit = 2**20 // 128  # rows of 128 B in 1 MiB
    check_rows_per_partition("sessionize", 3 * fit, 3, memory, row_bytes=128)
    with pytest.raises(ShufflePartitionsTooFewError) as refused:
        check_rows_per_partition("sessionize", 3 * fit + 1, 3, memory, row_bytes=128)
    message = str(refused.value)
    assert "\n" not in message
    assert "spark.shuffle_partitions to at least 4" in message
    assert f"{3 * fit + 1:,} events in 3 shuffle partitions" in message


def test_the_bench_sizes_fit_a_1g_driver_and_8_partitions_at_20m_do_not() -> None:
    """The rule that refused nothing bench/scale.py passed, and refuses what ran out of heap."""
    memory = task_memory({"spark.master": "local[2]", "spark.driver.memory": "1g"}, 2)
    for events in (1_000_000, 5_000_000, 20_000_000, 50_000_000):
        partitions = max(8, events // 625_000)  # bench/scale.py's rule
        check_rows_per_partition("sessionize", events, partitions, memory)
    with pytest.raises(ShufflePartitionsTooFewError, match="at least 23"):
        check_rows_per_partition("sessionize", 20_000_000, 8, memory)
    assert math.ceil(20_000_000 / (217 * 2**20 // ROW_BYTES)) == 23


def test_the_session_check_reads_the_live_partitions_and_memory(spark: SparkSession) -> None:
    conf = dict(spark.sparkContext.getConf().getAll())
    fit = task_memory(conf, spark.sparkContext.defaultParallelism).mib * 2**20 // ROW_BYTES
    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        spark.conf.set("spark.sql.shuffle.partitions", "3")
        check_shuffle_fits(spark, "split", 3 * fit)
        with pytest.raises(ShufflePartitionsTooFewError, match=r"split: .* at least 4"):
            check_shuffle_fits(spark, "split", 3 * fit + 1)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before or "2")


def test_als_blocks_admit_what_passed_at_50m_and_nothing_larger() -> None:
    """bench/scale.py at 50M events, 1 GB driver, 4 blocks: the protocol's 14,404,885 train
    rows fitted; the refit's 21,364,799 in 4 blocks are more a block than was seen to fit."""
    memory = task_memory({"spark.master": "local[2]", "spark.driver.memory": "1g"}, 2)
    key = "baselines.als.num_user_blocks"
    check_rows_per_partition("als", 14_404_885, 4, memory, ALS_ROW_BYTES, key, "train rows")
    with pytest.raises(ShufflePartitionsTooFewError) as refused:
        check_rows_per_partition("als", 21_364_799, 4, memory, ALS_ROW_BYTES, key, "train rows")
    needed = math.ceil(21_364_799 / (217 * 2**20 // ALS_ROW_BYTES))
    assert f"set {key} to at least {needed}" in str(refused.value)
    check_rows_per_partition("als", 21_364_799, needed, memory, ALS_ROW_BYTES, key, "train rows")


def test_an_als_fit_names_the_block_key_that_is_too_small(spark: SparkSession) -> None:
    conf = dict(spark.sparkContext.getConf().getAll())
    fit = task_memory(conf, spark.sparkContext.defaultParallelism).mib * 2**20 // ALS_ROW_BYTES
    blocks = {"baselines.nmf.num_user_blocks": 4, "baselines.nmf.num_item_blocks": 2}
    check_als_blocks_fit(spark, "nmf", 2 * fit, blocks)
    with pytest.raises(
        ShufflePartitionsTooFewError, match=r"nmf_item_blocks|num_item_blocks to at least 3"
    ):
        check_als_blocks_fit(spark, "nmf", 2 * fit + 1, blocks)


def test_auto_caches_als_iterations_on_disk_only_where_the_factors_outgrow_a_task() -> None:
    """bench/scale.py, 1 GB driver, local[2]: at 50M events (1,141,725 users x 200,000 items,
    rank 64) the refit ran out of heap with its iterations in memory; at 20M (457k x 99k) it
    passed. One set of factors is (users + items) x rank float32."""
    memory = task_memory({"spark.master": "local[2]", "spark.driver.memory": "1g"}, 2)
    key = "baselines.als.intermediate_storage"
    level, why = als_intermediate_storage(key, "auto", memory, 1_141_725, 200_000, 64)
    assert level == "DISK_ONLY"
    assert f"{(1_141_725 + 200_000) * 64 * 4 / 2**20:,.0f} MiB" in why and key in why
    assert als_intermediate_storage(key, "auto", memory, 457_000, 99_000, 64)[0] == (
        "MEMORY_AND_DISK"
    )
    # The boundary: factors of exactly one task's memory stay in memory, one row more does not.
    rows = memory.mib * 2**20 // (64 * 4)
    assert als_intermediate_storage(key, "auto", memory, rows - 10, 10, 64)[0] == "MEMORY_AND_DISK"
    assert als_intermediate_storage(key, "auto", memory, rows - 9, 10, 64)[0] == "DISK_ONLY"
    # A level set by hand is kept, whatever the sizes.
    for given in ("MEMORY_AND_DISK", "MEMORY_AND_DISK_SER", "DISK_ONLY"):
        assert als_intermediate_storage(key, given, memory, 10**8, 10**6, 64)[0] == given
