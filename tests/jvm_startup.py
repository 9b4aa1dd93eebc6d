"""Faster start for the tests' short-lived Spark driver JVMs (plain Python: the Airflow tests'
environment imports it too).

Every spark-submit the tests start (CLI and kill tests, each Airflow task) is a fresh JVM
that spends most of its life loading Spark's classes and JIT-compiling code it runs once: a
tiny stage took 18 s of wall time and 29 s of CPU, of which the stage itself was 7 s. Two
standard JVM settings halve that (measured 18 s -> 9 s wall, 29 s -> 11 s CPU, on 2 cores):

- an application class-data-sharing archive (AppCDS, JDK 13+): the classes a real recpipe run
  loads, parsed and verified once, then mapped by every later JVM with the same class path;
- for short-lived JVMs, ``-XX:TieredStopAtLevel=1``: the quick C1 compiler only, no C2
  threads competing for the two cores for code that runs for seconds. C1's stack frames are
  larger: ALS's tasks, whose long lineage recurses deeply, overflowed the default 1 MB
  thread stack (StackOverflowError), so these JVMs get ``-Xss4m``. The tests' long-lived
  session JVM, which runs ALS on all of MovieLens 100K, keeps C2 and the default stack.

They reach drivers through ``SPARK_SUBMIT_OPTS`` (read by ``spark-submit`` for the driver
JVM only, and unlike ``JDK_JAVA_OPTIONS`` not echoed to stderr, so the tests' one-line-error
checks see what a user sees). A JVM whose class path differs from the archive's (a driver
given an extra JDBC jar) silently runs without it: only speed depends on this, never results.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# A small real chain in one driver JVM: the classes of Hive's metastore, JSON and Parquet
# reading and writing, shuffles, windows and Arrow that every recpipe stage loads.
WARM_UP = """
import sys
from recpipe.config import load_config
from recpipe.datasets.synthetic import SyntheticSpec, generate_events
from recpipe.pipeline import StepContext, run_steps
from recpipe.storage import as_location
root = sys.argv[1]
generate_events(SyntheticSpec(n_events=400, n_files=1, seed=1), as_location(root) / "raw")
config = load_config(None, [f"paths.root={root}", f"paths.raw_events={root}/raw",
                            "spark.shuffle_partitions=2", "spark.ui=false",
                            "split.protocols=[random_by_user]", "export.kinds=[pairwise]"])
run_steps(StepContext(config, "2026-11-20"), ["clean", "vocab", "sessionize", "split", "export"])
"""
QUIET = "-Xlog:disable -Xlog:all=error:stderr"  # a rejected archive is not worth a warning


def _key(spark_submit: Path) -> str:
    """What the archive depends on: the JVM and the Spark jars it would map."""
    java = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
    spark_jars = Path(
        subprocess.run(
            [str(spark_submit.parent / "python"), "-c",
             "import pathlib, pyspark; print(pathlib.Path(pyspark.__file__).parent / 'jars')"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()
    )  # fmt: skip
    jars = sorted(spark_jars.glob("*.jar"))
    digest = hashlib.sha256(java.stderr.encode())
    for jar in jars:
        digest.update(f"{jar.name}:{jar.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def driver_jvm_options(
    short_lived: bool = True, spark_submit: Path = REPO / ".venv" / "bin" / "spark-submit"
) -> str:
    """``SPARK_SUBMIT_OPTS`` for fast-starting drivers (C1 only too when ``short_lived``):
    the class archive's options, then the compiler settings."""
    quick = "-XX:TieredStopAtLevel=1 -Xss4m" if short_lived else ""
    return f"{_archive_options(spark_submit)} {quick}".strip()


def submit_opts(short_lived: bool = True) -> str:
    """``SPARK_SUBMIT_OPTS`` for the tests' drivers: what the environment already gives, plus
    :func:`driver_jvm_options` unless ``RECPIPE_TEST_FAST_JVM=0`` turns them off."""
    given = os.environ.get("SPARK_SUBMIT_OPTS", "")
    if os.environ.get("RECPIPE_TEST_FAST_JVM", "1") == "0":
        return given
    return f"{given} {driver_jvm_options(short_lived)}".strip()


@functools.cache  # one key and at most one build per process, however many callers ask
def _archive_options(spark_submit: Path) -> str:
    """Options that map the class archive, built once per JVM and Spark version and cached
    beside the main environment; ``""`` without one (no java, no main environment, or the
    build failed)."""
    cache = REPO / ".venv" / "jvm-cds"
    try:
        archive = cache / f"spark-{_key(spark_submit)}.jsa"
    except OSError:  # no java or no main environment yet: the tests that need them say so
        return ""
    if not archive.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="recpipe-cds-") as work:
            script = Path(work) / "warm_up.py"
            script.write_text(WARM_UP)
            partial = cache / f".{archive.name}.{os.getpid()}"
            env = {
                **os.environ,
                "SPARK_SUBMIT_OPTS": f"-XX:ArchiveClassesAtExit={partial} {QUIET}",
                "PYSPARK_PYTHON": str(spark_submit.parent / "python"),
                "PYSPARK_DRIVER_PYTHON": str(spark_submit.parent / "python"),
                "SPARK_LOCAL_IP": "127.0.0.1",
            }
            done = subprocess.run(
                [str(spark_submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                 str(script), str(Path(work) / "root")],
                env=env, capture_output=True, text=True, check=False, cwd=work, timeout=600,
            )  # fmt: skip
            if done.returncode != 0 or not partial.exists():
                print("jvm_startup: no class archive (" + done.stderr[-500:] + ")", file=sys.stderr)
                partial.unlink(missing_ok=True)
                return ""
            partial.replace(archive)  # atomic: a concurrent session sees all or nothing
    return f"-XX:SharedArchiveFile={archive} {QUIET}"
