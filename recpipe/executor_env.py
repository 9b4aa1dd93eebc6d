"""The Python environment executors run: built as a relocatable archive, checked before shipping.

Spark ships an archive to every executor with ``spark.archives=<archive>#environment`` and
unpacks it in the executor's working directory; executors then run ``./environment/bin/python``
while the driver keeps its own interpreter (Spark's Python package management docs,
``venv-pack`` route). :func:`build` makes such an archive: a fresh virtualenv holding recpipe
(not editable) and its dependencies except pyspark, which executors take from their own Spark
installation (``$SPARK_HOME/python/lib/pyspark.zip``), packed with ``venv-pack``. Beside the
archive goes ``<archive>.sha256`` so :func:`check_archive` can tell a corrupt or truncated
copy from a good one before any executor unpacks it.

A virtualenv links its interpreter to the Python it was created from: executors need that
Python (same version, same path) installed, as the venv-pack docs state.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from recpipe import storage
from recpipe.errors import RecpipeError
from recpipe.storage import as_location

log = logging.getLogger(__name__)

ALIAS = "environment"
EXECUTOR_PYTHON = f"./{ALIAS}/bin/python"
SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Packages executors do not need from the archive: Spark puts its own pyspark (and py4j) on
# the Python workers' path, matching the JVM they serve.
_NOT_SHIPPED = frozenset({"pyspark", "py4j"})
_CHUNK = 1 << 22


class ArchiveError(RecpipeError):
    """An executor environment archive is missing, unreadable or corrupt."""


def checksum_file(archive: str) -> str:
    """Where the SHA-256 of ``archive`` is kept (``<archive>.sha256``)."""
    return f"{archive}.sha256"


def sha256_of(location: str) -> str:
    """Hex SHA-256 of a file at any location, streamed."""
    digest = hashlib.sha256()
    with storage.open_input(location) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def split_archive_spec(spec: str) -> tuple[str, str | None]:
    """``path#alias`` → (path, alias); the alias is ``None`` without a ``#``."""
    path, _, alias = spec.partition("#")
    return path, (alias or None)


def check_archive(spec: str, key: str) -> None:
    """Fail with one line naming ``key`` unless ``spec`` (``archive[#alias]``) is shippable.

    The archive must exist and have a suffix Spark unpacks; when its ``.sha256`` file exists
    the content must match it, otherwise its first bytes must be those of its format.
    """
    path, _ = split_archive_spec(spec)
    if not path.lower().endswith(SUFFIXES):
        raise ArchiveError(
            f"{key}: {path} is not an archive Spark unpacks (expected {', '.join(SUFFIXES)})"
        )
    try:
        if not storage.is_file(path):
            raise ArchiveError(
                f"{key}: environment archive {path} does not exist "
                "(make dist builds dist/recpipe-env.tar.gz)"
            )
        sidecar = checksum_file(path)
        if storage.exists(sidecar):
            expected = storage.read_text(sidecar).split()[0].strip().lower()
            actual = sha256_of(path)
            if actual != expected:
                raise ArchiveError(
                    f"{key}: environment archive {path} is corrupt: its SHA-256 {actual[:12]}… "
                    f"does not match {expected[:12]}… in {as_location(sidecar).name}"
                )
            return
        _check_magic(path, key)
    except OSError as exc:
        raise ArchiveError(f"{key}: cannot read environment archive {path}: {exc}") from None


def _check_magic(path: str, key: str) -> None:
    with storage.open_input(path) as stream:
        head = stream.read(512)
    lower = path.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        ok = head[:2] == b"\x1f\x8b"
    elif lower.endswith(".zip"):
        ok = head[:4] == b"PK\x03\x04"
    else:
        ok = len(head) == 512 and head[257:262] == b"ustar"
    if not ok:
        raise ArchiveError(f"{key}: environment archive {path} is corrupt (not a valid archive)")


def executor_requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """recpipe's dependencies (plus ``extras``) that executors need: all but pyspark/py4j."""
    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ArchiveError(f"extras: recpipe has no extra {extra!r} ({sorted(optional)})")
        wanted += optional[extra]
    return [r for r in wanted if _requirement_name(r) not in _NOT_SHIPPED]


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    return (match.group(0) if match else requirement).lower().replace("_", "-")


def build(
    output: Path,
    *,
    source: Path,
    extras: list[str],
    constraints: Path | None = None,
    python: str = sys.executable,
    workdir: Path | None = None,
    compress_level: int = 4,
) -> Path:
    """Build the executors' environment archive at ``output`` and its ``.sha256``; return it.

    ``source`` is the recpipe checkout installed (not editable) into a fresh virtualenv made
    by ``python`` under ``workdir`` (default: beside ``output``), together with its
    dependencies (``extras`` included) except pyspark. Nothing is left at ``output`` if a step
    fails.
    """
    output = output.absolute()
    env_dir = (workdir or output.parent) / "executor-env"
    shutil.rmtree(env_dir, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    pip_constraints = ["-c", str(constraints)] if constraints else []
    env_python = str(env_dir / "bin" / "python")
    steps = [
        [python, "-m", "venv", str(env_dir)],
        [env_python, "-m", "pip", "install", "-q", *pip_constraints,
         *executor_requirements(source / "pyproject.toml", extras)],
        [env_python, "-m", "pip", "install", "-q", "--no-deps", str(source)],
    ]  # fmt: skip
    for step in steps:
        log.info("executor env: %s", " ".join(step[:6]))
        subprocess.run(step, check=True)
    partial = output.with_name(output.name + ".partial" + _suffix(output))
    partial.unlink(missing_ok=True)
    venv_pack = Path(sys.executable).with_name("venv-pack")
    subprocess.run(
        [str(venv_pack) if venv_pack.exists() else "venv-pack", "-p", str(env_dir),
         "-o", str(partial), "-q", "--force", "--compress-level", str(compress_level)],
        check=True,
    )  # fmt: skip
    digest = sha256_of(str(partial))
    partial.chmod(0o644)  # venv-pack writes 0600; the archive is for other machines to fetch
    partial.replace(output)
    checksum = Path(checksum_file(str(output)))
    checksum.write_text(f"{digest}  {output.name}\n")
    shutil.rmtree(env_dir, ignore_errors=True)
    return output


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), "")


def main(argv: list[str] | None = None) -> int:
    """``python -m recpipe.executor_env OUTPUT``: build the archive (used by ``make dist``)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m recpipe.executor_env",
        description="Build the executors' Python environment archive for spark.archives "
        "(recpipe and its dependencies except pyspark, packed with venv-pack) and its .sha256.",
    )
    parser.add_argument("output", type=Path, help="archive to write, e.g. dist/recpipe-env.tar.gz")
    parser.add_argument("--source", type=Path, default=Path("."), help="recpipe checkout")
    parser.add_argument(
        "--extras", default="train", help="comma-separated extras to include (default: train, "
        "i.e. torch for TorchDistributor ranks and deep-model scoring); '' for none",
    )  # fmt: skip
    parser.add_argument("--constraints", type=Path, default=None, help="pip constraints file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    extras = [e for e in args.extras.split(",") if e]
    try:
        out = build(args.output, source=args.source.absolute(), extras=extras,
                    constraints=args.constraints)  # fmt: skip
    except (ArchiveError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = out.stat().st_size / 2**20
    print(f"{out}  {size:.0f} MiB  (ship: spark.archives={out}#{ALIAS}, "
          f"executors: spark.pyspark.python={EXECUTOR_PYTHON})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
