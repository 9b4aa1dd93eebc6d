"""Whether a stage's event rows fit its shuffle partitions, checked before any Spark job.

A Spark task holds one shuffle partition in the JVM memory its slot gets: the heap less
Spark's 300 MiB reserve, times ``spark.memory.fraction``, shared by the task slots running at
once (in local mode the driver's heap and the ``local[N]`` threads, on a cluster an executor's
heap and its cores). Sorts and aggregations spill, but not everything a task holds is counted
(session lists, hash-aggregate buffers, a persisted block read back), so a partition far larger
than its share runs the heap out part-way through a stage. Measured with ``bench/scale.py`` at
20M events, 1 GB driver, ``local[2]`` (~217 MiB a task): ``sessionize`` failed with 2.5M rows
a partition and passed with 625k, so a row costs between 87 and 364 B; :data:`ROW_BYTES` takes
a value inside that range. A stage whose rows per partition exceed what fits stops before work
starts with an error naming ``spark.shuffle_partitions``.

MLlib's ALS builds each user block's and each item block's ratings as plain arrays in one
task (``ALS.makeBlocks``), memory Spark neither tracks nor spills. Measured the same way at 50M
events (~217 MiB a task): blocks of 3.6M train rows built in a clean heap, so a train row costs
at most 63 B there. :data:`ALS_ROW_BYTES` takes that bound, so the check admits no block larger
than one seen to fit; a fit whose blocks cannot hold their rows stops with an error naming
``baselines.<model>.num_user_blocks`` or ``num_item_blocks``. (The same run's next fit failed
at 5.34M and then at 2.14M rows a block alike: not its blocks but the factors and blocks of its
iterations, cached in the heap, left too little: ``baselines.als.intermediate_storage``.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recpipe.config import ConfigError
from recpipe.scoring.memory import executor_cores, parse_mib

RESERVED_MIB = 300  # Spark's reserved system memory (spark.testing.reservedMemory)
DEFAULT_FRACTION = 0.6  # spark.memory.fraction's default
# Bytes an event row costs a task in the stages that shuffle events by user (see above).
ROW_BYTES = 256
# Bytes one train row costs the task building its ALS block (see above).
ALS_ROW_BYTES = 63
PARTITIONS_KEY = "spark.shuffle_partitions"

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class ShufflePartitionsTooFewError(ConfigError):
    """A stage's rows per shuffle partition (or per ALS block) cannot fit the memory a task
    has."""


@dataclass(frozen=True)
class TaskMemory:
    """MiB of execution and storage memory one running task gets, and where it comes from."""

    mib: int
    source: str  # e.g. "spark.driver.memory=1g, 2 task slots, spark.memory.fraction=0.6"


def task_memory(conf: Mapping[str, str], local_slots: int) -> TaskMemory:
    """The memory a task gets under ``conf`` (the running session's settings); ``local_slots``
    is the number of tasks a local master runs at once."""
    master = conf.get("spark.master", "local[*]")
    fraction_text = conf.get("spark.memory.fraction", str(DEFAULT_FRACTION))
    try:
        fraction = float(fraction_text)
    except ValueError:
        raise ConfigError(
            f"invalid config: spark.memory.fraction={fraction_text!r} is not a number"
        ) from None
    if master.startswith("local") and not master.startswith("local-cluster"):
        key, default, slots = "spark.driver.memory", "1g", max(local_slots, 1)
    else:
        key, default = "spark.executor.memory", "1g"
        slots = _executor_slots(conf)
    heap_text = conf.get(key, default)
    heap = parse_mib(heap_text, key)
    mib = int(max(heap - RESERVED_MIB, 0) * fraction / slots)
    source = f"{key}={heap_text}, {slots} task slot(s), spark.memory.fraction={fraction_text}"
    return TaskMemory(mib, source)


def _executor_slots(conf: Mapping[str, str]) -> int:
    """Tasks an executor runs at once: its cores over ``spark.task.cpus`` (cores 1 when unset,
    the lenient guess: a standalone executor takes all its worker's cores by default)."""
    task_cpus = conf.get("spark.task.cpus", "1")
    if not re.fullmatch(r"\d+", task_cpus.strip()):
        return 1
    return max(executor_cores(conf) // max(int(task_cpus), 1), 1)


def rows_that_fit(memory: TaskMemory, row_bytes: int) -> int:
    """How many event rows of ``row_bytes`` one shuffle partition may hold in ``memory``."""
    return memory.mib * 2**20 // row_bytes


def check_rows_per_partition(
    stage: str,
    rows: int,
    partitions: int,
    memory: TaskMemory,
    row_bytes: int | None = None,
    key: str = PARTITIONS_KEY,
    unit: str = "events",
) -> None:
    """Refuse, naming ``key`` (:data:`PARTITIONS_KEY` unless given), when ``rows`` over
    ``partitions`` leaves more rows a task than ``memory`` holds (rows of :data:`ROW_BYTES`
    unless ``row_bytes`` is given)."""
    row_bytes = row_bytes or ROW_BYTES
    fit = rows_that_fit(memory, row_bytes)
    per_partition = math.ceil(rows / max(partitions, 1))
    if per_partition <= fit:
        return
    needed = math.ceil(rows / max(fit, 1))
    kind = "shuffle partitions" if key == PARTITIONS_KEY else f"parts ({key})"
    raise ShufflePartitionsTooFewError(
        f"{stage}: {rows:,} {unit} in {partitions} {kind} is {per_partition:,} a "
        f"task, but a task has ~{memory.mib} MiB ({memory.source}), room for ~{fit:,} {unit} at "
        f"~{row_bytes} B: set {key} to at least {needed} (or give tasks more memory)"
    )


def session_task_memory(spark: SparkSession) -> TaskMemory:
    """:func:`task_memory` under the running session's settings."""
    context = spark.sparkContext
    return task_memory(dict(context.getConf().getAll()), context.defaultParallelism)


def check_shuffle_fits(spark: SparkSession, stage: str, rows: int) -> None:
    """:func:`check_rows_per_partition` for ``rows`` events under the running session's
    shuffle partitions and task memory."""
    partitions = int(spark.conf.get("spark.sql.shuffle.partitions") or "200")
    check_rows_per_partition(stage, rows, partitions, session_task_memory(spark))


def als_intermediate_storage(
    key: str, setting: str, memory: TaskMemory, n_users: int, n_items: int, rank: int
) -> tuple[str, str]:
    """The storage level of ALS's per-iteration blocks and factors (config ``key`` set to
    ``setting``), and why.

    ``auto`` keeps them in memory (MLlib's default, ``MEMORY_AND_DISK``) unless one set of
    factors, (users + items) x rank floats, is larger than the memory a task has: then
    ``DISK_ONLY``. Cached in the heap such factors crowd out the arrays ALS's tasks build,
    which Spark neither tracks nor spills, so the next task runs out of heap (measured with
    ``bench/scale.py``, 1 GB driver, ``local[2]``, ~217 MiB a task: the 50M-event refit,
    1.34M x 64 floats = 328 MiB, failed in memory and passed on disk; 20M's 0.56M x 64 =
    136 MiB passed in memory). On disk the fit took 2-10 % longer. Any other ``setting`` is
    kept as given.
    """
    if setting != "auto":
        return setting, f"{key}={setting}"
    factor_mib = (n_users + n_items) * rank * 4 / 2**20
    level = "DISK_ONLY" if factor_mib > memory.mib else "MEMORY_AND_DISK"
    return level, (
        f"{key}=auto: {n_users + n_items:,} factor rows x {rank} = {factor_mib:,.0f} MiB against "
        f"~{memory.mib} MiB a task ({memory.source})"
    )


def check_als_blocks_fit(
    spark: SparkSession, model: str, rows: int, blocks: dict[str, int]
) -> None:
    """Refuse an ALS fit of ``rows`` train rows whose user or item blocks (``blocks``: config
    key -> count) cannot hold their share in a task, naming the key, before any Spark job."""
    memory = session_task_memory(spark)
    for key, count in blocks.items():
        check_rows_per_partition(
            f"train-baseline {model}", rows, count, memory, ALS_ROW_BYTES, key, "train rows"
        )
