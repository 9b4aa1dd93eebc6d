"""Petastorm loader (``train.loader=petastorm``): the export stage's Parquet read through
Petastorm's ``make_batch_reader``, for clusters whose data path is built on Petastorm.

Sharding, shuffling and batching are the Arrow loader's (file ``i`` -> rank ``i % world_size``,
the same seeded shuffle buffer, the same ``Batch``); only decoding goes through Petastorm. Each
rank gets one reader per epoch over its own files. Petastorm 0.13.1 can end an epoch early
without an error (its thread pool checks for the end of data before it checks that all row
groups were handed out), so every epoch's rows are counted and compared with the manifest, and
any difference raises :class:`ShortReadError`.

Files are read through recpipe's own ``pyarrow.fs`` file system for their location (see
:mod:`recpipe.storage`: viewfs mounts resolved, object store settings from the Hadoop
configuration), handed to Petastorm behind pyarrow's legacy file system interface, the one its
pyarrow-12 ``ParquetDataset`` needs (see :func:`legacy_filesystem`).

Petastorm needs pyarrow < 15 (the Horovod environment, ``make legacy-venv``); pyarrow before
14.0.1 deserialises arbitrary Python objects from Arrow extension types (CVE-2023-47248), so
this module first installs the ``pyarrow_hotfix`` mitigation there.
"""

from __future__ import annotations

import functools
import importlib
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from recpipe.data.arrow_loader import (
    ArrowSampleDataset,
    Chunk,
    DataFormatError,
    SampleColumn,
    ShardFile,
    ShortReadError,
    batch_chunks,
    make_batch,
)
from recpipe.data.batch import Batch, SampleKind
from recpipe.storage import Location, arrow_path, as_location, resolved_location

POOLS = ("dummy", "thread", "process")

# Petastorm 0.13.1 on pyarrow 12 warns on every row group about pyarrow's legacy dataset API
# it still uses, and about the regex semantics of schema_fields (our names are escaped).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
warnings.filterwarnings(
    "ignore", message="schema_fields behavior has changed", module=r"petastorm\."
)
# First pyarrow release with the CVE-2023-47248 fix.
SAFE_PYARROW = (14, 0, 1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def mitigate_pyarrow_cve() -> bool:
    """Install ``pyarrow_hotfix`` when this pyarrow predates the CVE-2023-47248 fix.

    Returns whether the hotfix was needed. Raises when it is needed but not installed.
    """
    if _version(pa.__version__) >= SAFE_PYARROW:
        return False
    try:
        importlib.import_module("pyarrow_hotfix")  # importing it is the mitigation
    except ImportError as error:
        raise RuntimeError(
            f"pyarrow {pa.__version__} is vulnerable to CVE-2023-47248 and pyarrow_hotfix is "
            "not installed: pip install pyarrow-hotfix (make legacy-venv does)"
        ) from error
    return True


def _petastorm() -> Any:
    try:
        import petastorm
    except ImportError as error:
        raise RuntimeError(
            f"train.loader=petastorm: petastorm is not importable here ({error}); it needs "
            "pyarrow < 15 and runs in the Horovod environment (make legacy-venv, "
            "train.launcher=horovod)"
        ) from error
    return petastorm


class PetastormSampleDataset(ArrowSampleDataset):
    """``ArrowSampleDataset``'s contract, decoding through Petastorm.

    ``pool`` is Petastorm's ``reader_pool_type``: ``dummy`` decodes in the loader's own
    prefetch thread (no Petastorm threads, no race), ``thread`` / ``process`` run ``workers``
    Petastorm workers. Iterate it directly (not through a torch DataLoader): it yields
    ``Batch``es in the calling process.
    """

    def __init__(
        self,
        files: Sequence[ShardFile],
        kind: SampleKind,
        batch_size: int,
        *,
        pool: str = "dummy",
        workers: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(files, kind, batch_size, **options)
        if pool not in POOLS:
            raise ValueError(f"train.petastorm_pool: unknown pool {pool!r}; one of {POOLS}")
        self.pool = pool
        self.workers = max(workers, 1)
        self.pin_memory = False
        mitigate_pyarrow_cve()
        self.make_batch_reader = _petastorm().make_batch_reader

    def loader(self, num_workers: int = 0, pin_memory: bool = False) -> Iterable[Batch]:
        """The dataset itself: Petastorm runs its own reader pool (``workers``), so no torch
        DataLoader workers; ``pin_memory`` pins each batch for GPU copies."""
        self.pin_memory = pin_memory
        return self

    def batches_for_rank(self, num_workers: int = 0) -> int:
        """Batches per epoch by the manifest: one stream per rank, so one short batch at most."""
        full, rest = divmod(self.rows_for_rank(), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Batch]:
        seeds, generator = self._epoch_randomness(worker=0)
        files = self._epoch_files(self.rank_files(), generator)
        reader_seed = int(seeds.generate_state(1, np.uint32)[0])
        decoded = self._petastorm_chunks(files, reader_seed)
        for chunk in batch_chunks(
            decoded, self.batch_size, self.shuffle_buffer, generator, self.drop_last
        ):
            batch = make_batch(chunk)
            yield batch.pin_memory() if self.pin_memory else batch

    def _petastorm_chunks(
        self, files: Sequence[ShardFile], seed: int
    ) -> Iterator[tuple[Chunk, int]]:
        """Decoded row groups of ``files``; at the end, the epoch's rows against the manifest."""
        names = [c.name for c in self._columns]
        urls, filesystem = _dataset_source([f.path for f in files])
        reader = self.make_batch_reader(
            urls,
            filesystem=filesystem,
            schema_fields=[re.escape(name) for name in names],  # Petastorm takes regexes
            reader_pool_type=self.pool,
            workers_count=self.workers,
            shuffle_row_groups=bool(self.shuffle_buffer),
            seed=seed,
            num_epochs=1,
        )
        read = 0
        try:
            for row_group in _refusing_ragged_lists(reader):
                columns = row_group._asdict()
                rows = len(columns[names[0]])
                if not rows:
                    continue
                chunk = {c.field: _checked(columns[c.name], c) for c in self._columns}
                read += rows
                yield chunk, rows
        finally:
            # stop/join rather than the context manager, whose exit prints a line every epoch.
            reader.stop()
            reader.join()
        expected = self.rows_for_rank()
        if read != expected:
            raise ShortReadError(
                f"rank {self.rank}: Petastorm ({self.pool} pool) returned {read} rows this epoch, "
                f"the manifest has {expected} in this rank's {len(files)} file(s) "
                f"({', '.join(f.path for f in files)})"
            )


def _dataset_source(paths: Sequence[str]) -> tuple[list[str], Any]:
    """Petastorm's dataset URLs for ``paths`` and the file system to read them with.

    With a file system given, Petastorm only takes the path part of each URL (``bucket/key``
    for s3/gs, the path for the rest), which is what ``pyarrow.fs`` takes for the location
    viewfs resolves to. Not ``Path.as_uri()``: Petastorm does not unquote, and Hive partition
    paths hold '='.
    """
    targets = [resolved_location(as_location(path)) for path in paths]
    filesystem, _ = arrow_path(targets[0])
    for target in targets:
        if _petastorm_path(target) != arrow_path(target)[1]:
            raise ValueError(
                f"train.loader=petastorm cannot read {target}: Petastorm names its files "
                "differently there; use train.loader=arrow"
            )
    return [target.uri for target in targets], legacy_filesystem(filesystem)


def legacy_filesystem(filesystem: Any) -> Any:
    """A ``pyarrow.fs`` file system behind the deprecated ``pyarrow.filesystem`` interface.

    Petastorm 0.13.1 opens its ``ParquetDataset`` with arguments only pyarrow's legacy
    implementation takes, and pyarrow 12 picks that one only for a legacy file system object.
    """
    return _legacy_class()(filesystem)


@functools.cache
def _legacy_class() -> type:
    # pyarrow.filesystem exists up to pyarrow 15 only: imported here, in the Horovod
    # environment, never at module import.
    from fsspec.implementations.arrow import ArrowFSWrapper  # type: ignore[import-untyped]
    from pyarrow import filesystem as legacyfs

    class LegacyArrowFileSystem(legacyfs.DaskFileSystem):
        """fsspec's wrapper of a ``pyarrow.fs`` file system, as a legacy file system."""

        def __init__(self, arrow: Any) -> None:
            # Not DaskFileSystem.__init__: it only stores ``fs`` and warns of its deprecation.
            self.arrow = arrow
            self.fs = ArrowFSWrapper(arrow)

        def isdir(self, path: str) -> bool:
            return bool(self.fs.isdir(path))

        def isfile(self, path: str) -> bool:
            return bool(self.fs.isfile(path))

        def __reduce__(self) -> tuple[Any, ...]:
            # Petastorm's process pool pickles the file system; pyarrow.fs ones pickle.
            return legacy_filesystem, (self.arrow,)

    return LegacyArrowFileSystem


def _petastorm_path(location: Location) -> str:
    """The path Petastorm derives from a URL (``petastorm.fs_utils.get_dataset_path``)."""
    if location.scheme in ("s3", "s3a", "s3n", "gs", "gcs"):
        return location.authority + location.path
    return location.path


def _refusing_ragged_lists(reader: Any) -> Iterator[Any]:
    """The reader's row groups, with Petastorm's error for ragged list columns as ours."""
    try:
        yield from reader
    except RuntimeError as error:
        if "expected to be the same length" not in str(error):
            raise
        raise DataFormatError(
            f"{error}: sample list columns must hold lists of one fixed width"
        ) from error


def _checked(values: Any, column: SampleColumn) -> np.ndarray:
    """A decoded column as numpy, refusing ragged lists and non-numeric values."""
    array = np.asarray(values)
    if array.dtype == object:
        raise DataFormatError(
            f"column '{column.name}' holds lists of different lengths; sample list columns "
            "must have one fixed width"
        )
    if array.ndim != (2 if column.is_list else 1):
        raise DataFormatError(f"column '{column.name}' has shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise DataFormatError(f"column '{column.name}' has unsupported type {array.dtype}")
    return array
