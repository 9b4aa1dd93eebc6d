"""The memory a scoring or ranking task's Python worker has, and the block that fits in it.

Spark bounds an executor's Python workers with ``spark.executor.pyspark.memory``, shared
equally by the executor's cores (one worker per running task). A worker holds the broadcast
model twice while rebuilding it (the bytes and the model), the interpreter and libraries, and
one block of dense score rows. When the memory is configured the block is cut to what is left;
when not even one user's row fits, the job stops before any task starts with an error naming
the keys, instead of workers killed for memory half way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from recpipe.config import ConfigError
from recpipe.errors import BlockTooLargeError
from recpipe.evaluation.ranking import ROW_COPIES

PYSPARK_MEMORY = "spark.executor.pyspark.memory"
EXECUTOR_CORES = "spark.executor.cores"
# The interpreter, torch, pyarrow and one Arrow batch of users: measured ~200 MiB of
# executor Python RSS at 5M events (bench/scale.py), rounded up.
WORKER_BASE_MIB = 256

_UNITS = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_mib(text: str, key: str) -> int:
    """A Spark memory size (``512m``, ``2g``, ``1024`` = MiB) in MiB; one-line error naming
    ``key`` when it is not one."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt])?b?\s*", text.lower())
    if not match:
        raise ConfigError(f"invalid config: {key}={text!r} is not a memory size (e.g. 512m, 2g)")
    return int(int(match.group(1)) * _UNITS[match.group(2) or "m"])


@dataclass(frozen=True)
class WorkerMemory:
    """MiB each Python worker may use, and where the figure comes from."""

    mib: int
    source: str  # e.g. "spark.executor.pyspark.memory=2g / spark.executor.cores=4"


def worker_memory(conf: Mapping[str, str]) -> WorkerMemory | None:
    """Each Python worker's share of ``spark.executor.pyspark.memory`` (None when unset)."""
    total = conf.get(PYSPARK_MEMORY)
    if not total:
        return None
    cores = executor_cores(conf)
    share = parse_mib(total, PYSPARK_MEMORY) // cores
    return WorkerMemory(share, f"{PYSPARK_MEMORY}={total} / {EXECUTOR_CORES}={cores}")


def executor_cores(conf: Mapping[str, str]) -> int:
    """``spark.executor.cores`` (1 when unset); one-line error naming it when it is not a
    positive number."""
    cores = conf.get(EXECUTOR_CORES) or "1"
    if not cores.strip().isdigit() or int(cores) < 1:
        raise ConfigError(f"invalid config: {EXECUTOR_CORES}={cores!r} is not a positive number")
    return int(cores)


def fitted_block_mib(
    conf: Mapping[str, str], block_mib: int, key: str, n_items: int, model_bytes: int
) -> int:
    """``block_mib`` (config ``key``), or less when the workers' memory leaves less after the
    model (held twice) and :data:`WORKER_BASE_MIB`; :class:`BlockTooLargeError` naming the keys
    when not even one user's score rows over ``n_items`` items fit."""
    memory = worker_memory(conf)
    if memory is None:
        return block_mib
    model_mib = 2 * model_bytes / 2**20
    left = int(memory.mib - WORKER_BASE_MIB - model_mib)
    row_mib = (n_items + 1) * 8 * ROW_COPIES / 2**20
    if left < row_mib:
        raise BlockTooLargeError(
            f"each Python worker has {memory.mib} MiB ({memory.source}); the model takes "
            f"~{model_mib:.0f} MiB, the worker itself ~{WORKER_BASE_MIB} MiB, and one user's "
            f"score rows over {n_items:,} items ~{row_mib:.1f} MiB: raise {PYSPARK_MEMORY} "
            f"(or lower {EXECUTOR_CORES})"
        )
    return min(block_mib, left)
