"""Scale benchmark: the whole chain at growing event counts with a 1 GB driver.

For each size (``--sizes``, event counts), synthetic logs (users ~ events/40, items ~
events/200 capped at 200k) go through every stage as its own ``recpipe`` command, as the DAG
runs them: clean -> vocab -> sessionize -> split -> train-baseline (ALS) -> export -> train
(one deep model, one epoch) -> evaluate -> gate -> score (the gate's choice, as the DAG
scores it) -> publish, with
``spark.driver_memory=1g`` and ``spark.shuffle_partitions`` growing with the events past 5M
(see :func:`shuffle_partitions`), as an operator raises it with the data.
Per stage it prints wall time, events/s, peak RSS of the driver's Python and JVM and of the
largest executor Python worker (sampled from /proc every 0.2 s, so Linux only), and ends
with the ratios of the largest size to the smallest: one line for time, one for peak driver
RSS (goals from 5M to 50M events: time <= 11x, driver RSS <= 1.5x).

    .venv/bin/python bench/scale.py [--sizes 1000000 5000000] [--root var/scale] [--resume]

``--resume`` keeps a size's state and the stages already measured (``stages-<size>.json``)
and runs only the rest, so a long size can be finished by a later invocation; a stage cut
off midway runs again from its start (every stage is an idempotent re-run).

The training ranks are not driver state: with the in-process launcher the train stage's
Python *is* the trainer, holding the model, gradients and optimizer moments, which grow
with users and items by design. Its peak is reported as ``trainer_py_mib`` and kept out of
the driver ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recpipe.console import format_table
from recpipe.datasets.synthetic import SyntheticSpec, generate_events
from recpipe.storage import as_location

DS = "2026-11-21"  # the synthetic logs span 2026-11-01 .. 2026-11-21
MODEL = "bpr_mf"
STAGES: list[tuple[str, list[str]]] = [
    ("clean", ["clean"]),
    ("vocab", ["vocab"]),
    ("sessionize", ["sessionize"]),
    ("split", ["split"]),
    ("train-als", ["train-baseline", "--model", "als"]),
    ("export", ["export"]),
    ("train", ["train", "--model", MODEL, "--no-evaluate"]),
    ("evaluate", ["evaluate", "--model", MODEL, "--model", "als", "--no-gate"]),
    ("gate", ["gate"]),
    ("score", ["score"]),  # the gate's choice: publish then copies its files
    ("publish", ["publish"]),
]
SETTINGS = [
    "spark.driver_memory=1g",
    "spark.master=local[2]",
    "split.protocols=[random_by_user]",
    "train.processes=1",
    "train.max_epochs=1",
    f"gate.candidate={MODEL}",
    "baselines.als.max_iter=5",
]


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    # Every thread's children: the JVM starts Python workers from threads other than main.
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Peaks:
    """Peak RSS (KiB) of the driver's Python, its JVM, and the largest executor Python."""

    driver_python: int = 0
    driver_jvm: int = 0
    executor_python: int = 0
    seen: set[int] = field(default_factory=set)

    def sample(self, root_pid: int) -> None:
        """One look at the process tree under ``root_pid``."""
        self.driver_python = max(self.driver_python, _rss_kib(root_pid))
        stack = [(child, False) for child in _children(root_pid)]
        while stack:
            pid, under_jvm = stack.pop()
            command = _command(pid)
            rss = _rss_kib(pid)
            is_jvm = "java" in command.split(" ", 1)[0]
            if is_jvm:
                self.driver_jvm = max(self.driver_jvm, rss)
            elif under_jvm and "python" in command:
                self.executor_python = max(self.executor_python, rss)
            elif "python" in command:  # training ranks the driver starts
                self.driver_python = max(self.driver_python, rss)
            stack.extend((child, under_jvm or is_jvm) for child in _children(pid))


def run_stage(args: list[str], overrides: list[str], log: Path) -> tuple[float, Peaks]:
    """Run one ``recpipe`` command, sampling its process tree; (seconds, peaks)."""
    command = [sys.executable, "-m", "recpipe", *args, "--ds", DS]
    for item in overrides:
        command += ["--set", item]
    peaks = Peaks()
    started = time.perf_counter()
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                peaks.sample(process.pid)
                time.sleep(0.2)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        code = process.wait()
        done.set()
        poller.join()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {code}); see {log}")
    return seconds, peaks


def spec_for(size: int) -> SyntheticSpec:
    """Users ~ events/40, items ~ events/200 capped at 200k, 8 files."""
    return SyntheticSpec(
        n_events=size, n_users=max(100, size // 40), n_items=min(200_000, max(50, size // 200)),
        n_files=8, seed=1,
    )  # fmt: skip


def shuffle_partitions(size: int) -> int:
    """8 up to 5M events, then one per 625k events: a task's share of a shuffle stays near
    what 8 partitions hold at 5M. At 20M events 8 partitions (2.5M rows each) ran the 1 GB
    local JVM out of heap in sessionize's sort; 32 fit."""
    return max(8, size // 625_000)


def als_blocks(size: int) -> int:
    """ALS user and item blocks: the default 4 up to 20M events, then one per 5M. At 50M
    events the refit's 21.4M train rows in 4 blocks are more a block than ``recpipe.task_memory``
    admits in a 1 GB local JVM (at most 3.6M were seen to fit)."""
    return max(4, -(-size // 5_000_000))


@dataclass
class StageResult:
    """One stage at one size."""

    events: int
    stage: str
    seconds: float
    peaks: Peaks

    @property
    def trains(self) -> bool:
        """Whether this stage's Python is the training process rather than a Spark driver."""
        return self.stage == "train"

    def row(self) -> dict[str, object]:
        """The printed row."""
        python = self.peaks.driver_python // 1024
        return {
            "events": self.events,
            "stage": self.stage,
            "seconds": round(self.seconds, 1),
            "events_per_s": round(self.events / self.seconds),
            "driver_py_mib": 0 if self.trains else python,
            "driver_jvm_mib": self.peaks.driver_jvm // 1024,
            "trainer_py_mib": python if self.trains else 0,
            "executor_py_mib": self.peaks.executor_python // 1024,
        }

    def to_json(self) -> dict[str, object]:
        """What ``--resume`` reads back."""
        return {
            "events": self.events, "stage": self.stage, "seconds": self.seconds,
            "driver_python": self.peaks.driver_python, "driver_jvm": self.peaks.driver_jvm,
            "executor_python": self.peaks.executor_python,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageResult:
        """The inverse of :meth:`to_json`."""
        peaks = Peaks(data["driver_python"], data["driver_jvm"], data["executor_python"])
        return cls(data["events"], data["stage"], data["seconds"], peaks)


def bench_size(root: Path, size: int, resume: bool = False) -> list[StageResult]:
    """Every stage at one size (with ``resume``, only those not yet measured)."""
    raw = as_location(root) / f"raw-{size}"
    if not (root / f"raw-{size}" / "_generation.json").exists():
        print(f"generating {size:,} events ...", file=sys.stderr, flush=True)
        generate_events(spec_for(size), raw)
    state = root / f"state-{size}"
    done_file = root / f"stages-{size}.json"
    log = root / f"scale-{size}.log"
    results: list[StageResult] = []
    if resume and done_file.exists():
        results = [StageResult.from_json(d) for d in json.loads(done_file.read_text())]
    else:
        subprocess.run(["rm", "-rf", str(state)], check=True)
        done_file.unlink(missing_ok=True)
        log.unlink(missing_ok=True)
    overrides = [
        f"paths.root={state}", f"paths.raw_events={raw.uri}", *SETTINGS,
        f"spark.shuffle_partitions={shuffle_partitions(size)}",
        f"baselines.als.num_user_blocks={als_blocks(size)}",
        f"baselines.als.num_item_blocks={als_blocks(size)}",
    ]  # fmt: skip
    measured = {r.stage for r in results}
    for name, args in STAGES:
        if name in measured:
            print(f"{size:,} events: {name} measured before, kept", file=sys.stderr, flush=True)
            continue
        print(f"{size:,} events: {name} ...", file=sys.stderr, flush=True)
        seconds, peaks = run_stage(args, overrides, log)
        results.append(StageResult(size, name, seconds, peaks))
        done_file.write_text(json.dumps([r.to_json() for r in results], indent=2))
    return results


def whole_chain(results: list[StageResult]) -> dict[str, float]:
    """Total seconds and the peaks over the stages of one size."""
    return {
        "events": results[0].events,
        "seconds": round(sum(r.seconds for r in results), 1),
        "peak_driver_mib": max(
            (0 if r.trains else r.peaks.driver_python) + r.peaks.driver_jvm for r in results
        )
        // 1024,
        "peak_trainer_mib": max(r.peaks.driver_python for r in results if r.trains) // 1024,
        "peak_executor_py_mib": max(r.peaks.executor_python for r in results) // 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000],
        help="event counts to run (the issue's full run: 1000000 5000000 20000000 50000000)",
    )  # fmt: skip
    parser.add_argument("--root", type=Path, default=Path("var/scale"), help="bench folder")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep each size's state and measured stages; run only the stages not yet measured",
    )  # fmt: skip
    args = parser.parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    totals = []
    every: list[dict[str, object]] = []
    for size in sorted(args.sizes):
        results = bench_size(root, size, args.resume)
        every.extend(r.row() for r in results)
        print(format_table([r.row() for r in results], title=f"{size:,} events"), flush=True)
        totals.append(whole_chain(results))
    print(format_table(totals, title="whole chain (spark.driver_memory=1g, local[2])"))
    if len(totals) >= 2:
        small, large = totals[0], totals[-1]
        print(
            f"time ratio {large['events']:,.0f}/{small['events']:,.0f} events: "
            f"{large['seconds'] / small['seconds']:.2f}x "
            f"(data grew {large['events'] / small['events']:.1f}x)"
        )
        driver = large["peak_driver_mib"] / max(small["peak_driver_mib"], 1)
        print(f"peak driver RSS ratio (Python + JVM, training excluded): {driver:.2f}x")
        trainer = large["peak_trainer_mib"] / max(small["peak_trainer_mib"], 1)
        print(f"peak trainer RSS ratio (model state, grows with users x dim): {trainer:.2f}x")
    (root / "scale.json").write_text(json.dumps(every, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
