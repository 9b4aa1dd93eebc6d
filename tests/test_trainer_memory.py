"""The trainer's memory check: model state sized without allocating it, the memory a rank has."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_models import CONTEXT, TINY

from recpipe.config import TrainConfig
from recpipe.models import registry
from recpipe.train.memory import (
    RUNTIME_MIB,
    STATE_COPIES,
    available_mib,
    needed_mib,
    process_memory,
    state_bytes,
)


@pytest.mark.parametrize("name", sorted(registry()))
def test_state_is_sized_as_the_built_model_holds_it(name: str) -> None:
    cls = registry()[name]
    settings = TINY.get(name, {})
    model = cls(cls.config_class.model_validate(settings), CONTEXT)
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert held > 0
    assert state_bytes(name, settings, CONTEXT) == held


def test_bpr_mf_state_grows_with_its_tables() -> None:
    # BPR-MF at dim d holds a user row and an item row (and its padding row) of d floats.
    small = state_bytes("bpr_mf", {"dim": 8}, CONTEXT)
    large = state_bytes("bpr_mf", {"dim": 64}, CONTEXT)
    rows = CONTEXT.n_users + CONTEXT.n_items + 1
    assert large - small == rows * (64 - 8) * 4


def test_a_rank_needs_its_state_copies_and_the_runtime() -> None:
    assert needed_mib(0) == RUNTIME_MIB
    assert needed_mib(2**30) == STATE_COPIES * 1024 + RUNTIME_MIB
    assert needed_mib(1) == 1 + RUNTIME_MIB  # part of a MiB counts as one


def _meminfo(tmp_path: Path, available_kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(
        "MemTotal:       24000000 kB\n"
        "MemFree:        1000 kB\n"
        f"MemAvailable:   {available_kib} kB\n"
    )
    return path


def test_ranks_on_this_machine_share_its_available_memory(tmp_path: Path) -> None:
    meminfo = _meminfo(tmp_path, 8 * 1024 * 1024)  # 8 GiB
    one = process_memory(TrainConfig(), meminfo)
    assert one is not None and one.mib == 8192 and "MemAvailable" in one.source
    four = process_memory(TrainConfig(launcher="torchrun", processes=4), meminfo)
    assert four is not None and four.mib == 2048
    given = process_memory(TrainConfig(processes=4, memory_mib=3000), meminfo)
    assert given is not None and given.mib == 3000 and "train.memory_mib" in given.source


def test_ranks_elsewhere_are_not_sized_by_this_machine(tmp_path: Path) -> None:
    meminfo = _meminfo(tmp_path, 8 * 1024 * 1024)
    assert process_memory(TrainConfig(launcher="spark", spark_local_mode=False), meminfo) is None
    assert process_memory(TrainConfig(launcher="horovod", horovod_hosts="a:2,b:2"), meminfo) is None
    here = process_memory(TrainConfig(launcher="spark", spark_local_mode=True), meminfo)
    assert here is not None and here.mib == 8192


def test_this_machines_available_memory_is_below_its_physical_memory() -> None:
    if not Path("/proc/meminfo").exists():
        pytest.skip("no /proc/meminfo on this system")
    physical_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    available = available_mib()
    assert available is not None and 0 < available <= physical_mib
