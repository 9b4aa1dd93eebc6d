"""Scale benchmark: the whole chain at growing event counts with a 1 GB driver.

For each size (``--sizes``, event counts), synthetic logs (users ~ events/40, items ~
events/200 capped at 200k) go through every stage as its own ``recpipe`` command, as the DAG
runs them: clean -> vocab -> sessionize -> split -> train-baseline (ALS) -> export -> train
(one deep model, one epoch) -> evaluate -> gate -> score -> publish, with
``spark.driver_memory=1g``.
Per stage it prints wall time, events/s, peak RSS of the driver's Python and JVM and of the
largest executor Python worker (sampled from /proc every 0.2 s, so Linux only), and ends
with the ratios of the largest size to the smallest: one line for time, one for peak driver
RSS (goals from 5M to 50M events: time <= 11x, driver RSS <= 1.5x).

    .venv/bin/python bench/scale.py [--sizes 1000000 5000000] [--root var/scale]
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
    ("score", ["score", "--model", MODEL]),
    ("publish", ["publish"]),
]
SETTINGS = [
    "spark.driver_memory=1g",
    "spark.master=local[2]",
    "spark.shuffle_partitions=8",
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


@dataclass
class StageResult:
    """One stage at one size."""

    events: int
    stage: str
    seconds: float
    peaks: Peaks

    def row(self) -> dict[str, object]:
        """The printed row."""
        return {
            "events": self.events,
            "stage": self.stage,
            "seconds": round(self.seconds, 1),
            "events_per_s": round(self.events / self.seconds),
            "driver_py_mib": self.peaks.driver_python // 1024,
            "driver_jvm_mib": self.peaks.driver_jvm // 1024,
            "executor_py_mib": self.peaks.executor_python // 1024,
        }


def bench_size(root: Path, size: int) -> list[StageResult]:
    """Every stage at one size."""
    raw = as_location(root) / f"raw-{size}"
    if not (root / f"raw-{size}" / "_generation.json").exists():
        print(f"generating {size:,} events ...", file=sys.stderr, flush=True)
        generate_events(spec_for(size), raw)
    state = root / f"state-{size}"
    subprocess.run(["rm", "-rf", str(state)], check=True)
    overrides = [f"paths.root={state}", f"paths.raw_events={raw.uri}", *SETTINGS]
    log = root / f"scale-{size}.log"
    log.unlink(missing_ok=True)
    results = []
    for name, args in STAGES:
        print(f"{size:,} events: {name} ...", file=sys.stderr, flush=True)
        seconds, peaks = run_stage(args, overrides, log)
        results.append(StageResult(size, name, seconds, peaks))
    return results


def whole_chain(results: list[StageResult]) -> dict[str, float]:
    """Total seconds and the peaks over the stages of one size."""
    return {
        "events": results[0].events,
        "seconds": round(sum(r.seconds for r in results), 1),
        "peak_driver_mib": max(r.peaks.driver_python + r.peaks.driver_jvm for r in results) // 1024,
        "peak_executor_py_mib": max(r.peaks.executor_python for r in results) // 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000],
        help="event counts to run (the issue's full run: 1000000 5000000 20000000 50000000)",
    )  # fmt: skip
    parser.add_argument("--root", type=Path, default=Path("var/scale"), help="bench folder")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    totals = []
    every: list[dict[str, object]] = []
    for size in sorted(args.sizes):
        results = bench_size(root, size)
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
        print(f"peak driver RSS ratio (Python + JVM): {driver:.2f}x")
    (root / "scale.json").write_text(json.dumps(every, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
