"""Arrow loader: streams the export stage's Parquet sample files into shuffled ``Batch``es.

Files are split across ranks (file ``i`` -> rank ``i % world_size``) and, within a rank,
across DataLoader workers (the rank's ``j``-th file -> worker ``j % num_workers``), so every
file is read by exactly one (rank, worker). Each worker shuffles the order of its files per
epoch and shuffles rows through a bounded buffer; everything after Parquet decoding is
vectorised numpy/torch (no per-row Python). Each worker counts the rows it reads per file and
checks them against the manifest's counts, so a truncated or rewritten shard fails the epoch
instead of silently training on less data. Shards may be local paths or any URI
:mod:`recpipe.storage` reaches: each is opened through the ``pyarrow.fs`` file system it names.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from recpipe.data.batch import SAMPLE_KINDS, Batch, SampleKind
from recpipe.errors import RecpipeError
from recpipe.schema import (
    CONTEXT_IDX,
    HISTORY,
    HISTORY_TS,
    ITEM_IDX,
    LABEL,
    NEGATIVES,
    USER_IDX,
    VALUE,
)
from recpipe.storage import arrow_path

# Rows per Arrow record batch decoded from Parquet: large enough to amortise per-call overhead,
# small enough that a few decoded chunks in flight stay a few MB each.
READ_BATCH_ROWS = 32_768
# Decoded chunks the reader thread may run ahead of the batching code.
PREFETCH_CHUNKS = 2


@dataclass(frozen=True)
class ShardFile:
    """One Parquet sample file and the row count the export manifest recorded for it."""

    path: str  # a local path or a URI (hdfs://, viewfs://, s3a://, ...)
    rows: int


class ShortReadError(RecpipeError):
    """A worker read a different number of rows from a file than its manifest records.

    Constructible from the message alone so that DataLoader worker processes can re-raise it
    in the main process with its type intact.
    """


class DataFormatError(RecpipeError):
    """A sample file does not match the export schema (nulls, ragged list column)."""


@dataclass(frozen=True)
class SampleColumn:
    """A Parquet column of a sample kind and the Batch field it fills."""

    name: str  # Parquet column
    field: str  # Batch field
    out: np.dtype  # dtype of the Batch tensor
    is_list: bool  # fixed-length list -> [B, width]


_I64 = np.dtype(np.int64)


def sample_columns(
    kind: SampleKind, read_history_ts: bool, read_values: bool = False, read_context: bool = False
) -> tuple[SampleColumn, ...]:
    """The columns a kind's Batch needs (``value`` only for pointwise with ``read_values``,
    ``context_idx`` only with ``read_context``)."""
    context = (SampleColumn(CONTEXT_IDX, "context", _I64, True),) if read_context else ()
    return (*_kind_columns(kind, read_history_ts, read_values), *context)


def _kind_columns(
    kind: SampleKind, read_history_ts: bool, read_values: bool
) -> tuple[SampleColumn, ...]:
    base = (
        SampleColumn(USER_IDX, "users", _I64, False),
        SampleColumn(ITEM_IDX, "items", _I64, False),
    )
    if kind == "pairwise":
        return (*base, SampleColumn(NEGATIVES, "negatives", _I64, True))
    if kind == "pointwise":
        label = SampleColumn(LABEL, "labels", np.dtype(np.float32), False)
        if read_values:
            return (*base, label, SampleColumn(VALUE, "values", np.dtype(np.float32), False))
        return (*base, label)
    extra = (SampleColumn(HISTORY_TS, "history_ts", _I64, True),) if read_history_ts else ()
    return (*base, SampleColumn(HISTORY, "history", _I64, True), *extra)


# Decoded rows: Batch field name -> numpy array in the file's dtype ([rows] or [rows, width]).
Chunk = dict[str, np.ndarray]


# numpy dtypes of the Arrow value types a sample column may hold, by Arrow type name.
_NUMPY_TYPES = {
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "float": np.float32,
    "double": np.float64,
}


def _primitive(array: pa.Array, what: str) -> np.ndarray:
    """Zero-copy numpy view of a null-free primitive Arrow array.

    Reads the data buffer directly rather than through ``Array.to_numpy``, whose first call in
    a process imports pandas (about half a second in every freshly started worker).
    """
    if array.null_count:
        raise DataFormatError(f"{what} has {array.null_count} nulls")
    if pa.types.is_timestamp(array.type):
        dtype: np.dtype[Any] = np.dtype(np.int64)
    elif (name := str(array.type)) in _NUMPY_TYPES:
        dtype = np.dtype(_NUMPY_TYPES[name])
    else:
        raise DataFormatError(f"{what} has unsupported type {array.type}")
    return np.frombuffer(
        array.buffers()[1], dtype, count=len(array), offset=array.offset * dtype.itemsize
    )


def _to_numpy(
    array: pa.Array, column: SampleColumn, path: str, widths: dict[str, int]
) -> np.ndarray:
    """Zero-copy numpy view of one Arrow column chunk; list columns reshaped to [rows, width]."""
    what = f"{path}: column '{column.name}'"
    if not column.is_list:
        return _primitive(array, what)
    if array.null_count:
        raise DataFormatError(f"{what} has {array.null_count} null lists")
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        raise DataFormatError(f"{what} is a {array.type}, not a list")
    rows = len(array)
    index = np.int64 if pa.types.is_large_list(array.type) else np.int32
    offsets = np.frombuffer(
        array.buffers()[1], index, count=rows + 1, offset=array.offset * np.dtype(index).itemsize
    )
    # The export writes one fixed width per table; the first chunk a worker reads sets it.
    width = widths.setdefault(column.name, int(offsets[1] - offsets[0]))
    if not width:
        raise DataFormatError(f"{what} holds empty lists")
    # Every list must hold exactly `width` values; a diff over the offsets checks that in O(rows).
    if not (np.diff(offsets) == width).all():
        raise DataFormatError(f"{what} is not a fixed-length list of {width} values")
    # The child array's values between the first and last offset: zero-copy, and unlike
    # ListArray.flatten() it does not import pyarrow.compute (~0.3 s in each fresh worker).
    values = _primitive(array.values, f"{what} (values)")
    return values[offsets[0] : offsets[-1]].reshape(rows, width)


def _rows(array: np.ndarray) -> np.ndarray:
    """A 1-D view with one element per row: 2-D rows become opaque byte records, which numpy
    gathers and scatters several times faster than rows of a 2-D array."""
    if array.ndim == 1:
        return array
    return array.view(np.dtype((np.void, array.shape[1] * array.itemsize))).reshape(-1)


class _RowStream:
    """Hands out the next ``k`` rows of a stream of chunks as slices, across chunk borders."""

    def __init__(self, chunks: Iterator[tuple[Chunk, int]]) -> None:
        self._chunks = chunks
        self._chunk: Chunk = {}
        self._left = 0  # rows of the current chunk not handed out yet
        self._at = 0
        self.first: Chunk | None = None  # the first chunk, once read: gives dtypes and widths

    def peek(self) -> Chunk | None:
        """The first chunk without consuming it; None for an empty stream."""
        if self.first is None:
            self._advance()
        return self.first

    def _advance(self) -> bool:
        for chunk, rows in self._chunks:
            self._chunk, self._left, self._at = chunk, rows, 0
            if self.first is None:
                self.first = chunk
            return True
        return False

    def read(self, k: int) -> list[Chunk]:
        """Up to ``k`` rows as a list of chunk slices; fewer only at the end of the stream."""
        parts: list[Chunk] = []
        while k:
            if not self._left and not self._advance():
                break
            take = min(k, self._left)
            stop = self._at + take
            parts.append({name: a[self._at : stop] for name, a in self._chunk.items()})
            self._at, self._left, k = stop, self._left - take, k - take
        return parts


class _ShuffleBuffer:
    """A bounded buffer of ``capacity`` rows, stored per column in the files' own dtypes.

    Each round draws a fresh random permutation of the buffer's slots and walks it
    ``batch_size`` slots at a time: the rows in those slots form a batch and the next input
    rows are written into the freed slots. Every row is copied twice (in, out) whatever the
    buffer size, and a row emitted in round ``r`` entered the buffer in round ``r - 1`` or
    earlier, so rows mix across a window of about ``2 * capacity`` input rows.
    """

    def __init__(
        self, stream: _RowStream, capacity: int, batch_size: int, generator: torch.Generator
    ) -> None:
        first = stream.peek()
        assert first is not None
        self.stream = stream
        self.batch_size = batch_size
        self.generator = generator
        self.capacity = capacity
        # Per column: name, the buffer as one opaque record per row, and how to view a gathered
        # record array as values again (dtype, row shape).
        self.columns = []
        for name, array in first.items():
            buffer = np.empty((capacity, *array.shape[1:]), array.dtype)
            self.columns.append((name, _rows(buffer), array.dtype, array.shape[1:]))
        self.size = self._write(np.arange(capacity), stream.read(capacity))

    def _write(self, slots: np.ndarray, parts: list[Chunk]) -> int:
        """Copy ``parts`` into ``slots`` in order; returns the rows written."""
        start = stop = 0
        for part in parts:
            for name, buffer, _, _ in self.columns:
                src = part[name]
                stop = start + len(src)
                buffer[slots[start:stop]] = _rows(src)
            start = stop
        return start

    def _gather(self, slots: np.ndarray) -> Chunk:
        return {
            name: buffer.take(slots).view(dtype).reshape(len(slots), *shape)
            for name, buffer, dtype, shape in self.columns
        }

    def batches(self) -> Iterator[Chunk]:
        """Batches of ``batch_size`` rows until the input runs out, then the rest shuffled."""
        capacity, size, batch_size = self.capacity, self.size, self.batch_size
        if size == capacity:  # the input filled the buffer: run rounds until it runs out
            while True:
                order = torch.randperm(capacity, generator=self.generator).numpy()
                # With a capacity that is not a multiple of the batch size, the round's last
                # slots simply wait for the next round.
                for start in range(0, capacity - batch_size + 1, batch_size):
                    slots = order[start : start + batch_size]
                    yield self._gather(slots)
                    filled = self._write(slots, self.stream.read(batch_size))
                    if filled < batch_size:
                        # Live rows: this round's refilled slots and the ones not yet emitted.
                        live = np.concatenate(
                            [order[: start + filled], order[start + batch_size :]]
                        )
                        yield from self._drain(live)
                        return
        yield from self._drain(np.arange(size))

    def _drain(self, live: np.ndarray) -> Iterator[Chunk]:
        order = live[torch.randperm(len(live), generator=self.generator).numpy()]
        for start in range(0, len(order), self.batch_size):
            yield self._gather(order[start : start + self.batch_size])


def _concat(parts: list[Chunk]) -> Chunk:
    """One chunk from row slices (no copy when there is a single slice)."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class _WireBatch:
    """A batch in the files' narrow dtypes on its way from a DataLoader worker process.

    Pickling ships the numpy arrays by value through the worker's pipe, which costs several
    times less per batch than torch's shared-memory tensors (a new segment and file descriptor
    per tensor). The main process rebuilds a ``Batch`` and widens ids to int64 there, so ids
    cross the pipe at half size.
    """

    __slots__ = ("arrays",)

    def __init__(self, arrays: Chunk) -> None:
        self.arrays = arrays

    def __reduce__(self) -> tuple[Any, ...]:
        return make_batch, (self.arrays,)

    def __len__(self) -> int:
        return len(self.arrays["users"])


# Batch field -> dtype of its tensor.
_OUT_DTYPES = {
    c.field: c.out
    for kind in SAMPLE_KINDS
    for c in sample_columns(kind, True, read_values=True, read_context=True)
}


def make_batch(arrays: Chunk) -> Batch:
    """A Batch of tensors over per-field arrays. Arrays already fresh and in the right dtype
    (gathered rows) are wrapped; the rest (ids to widen, read-only views of Arrow memory) are
    copied once."""
    tensors = {}
    for field, array in arrays.items():
        dtype = _OUT_DTYPES[field]
        fresh = array.dtype == dtype and array.flags.writeable and array.flags.c_contiguous
        tensors[field] = torch.from_numpy(array if fresh else array.astype(dtype))
    return Batch(**tensors)


class ArrowSampleDataset(IterableDataset):
    """Batches of one sample kind from Parquet files, sharded by rank and DataLoader worker.

    ``shuffle_buffer`` is the number of rows each worker shuffles through (at least
    ``batch_size``); 0 turns shuffling off entirely: files in the given order, rows in file
    order. Call ``set_epoch`` before iterating each epoch to get a new, reproducible order.
    Each worker batches its own rows, so each worker's last batch may be short (or dropped,
    with ``drop_last``).

    Iterated in the main process it yields ``Batch``es. Inside a DataLoader worker it yields
    compact stand-ins that turn into ``Batch``es when they reach the main process (see
    ``_WireBatch``), so use it with ``make_loader``, or any DataLoader without a worker-side
    collate.
    """

    def __init__(
        self,
        files: Sequence[ShardFile],
        kind: SampleKind,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 16384,
        seed: int = 0,
        drop_last: bool = False,
        read_history_ts: bool = False,
        read_values: bool = False,
        read_context: bool = False,
    ) -> None:
        super().__init__()
        if kind not in SAMPLE_KINDS:
            raise ValueError(f"unknown sample kind {kind!r}; expected one of {SAMPLE_KINDS}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        if not files:
            raise ValueError("no sample files given")
        if len(files) % world_size:
            # An uneven split would give ranks different step counts and hang collectives.
            raise ValueError(
                f"{len(files)} sample files cannot be split evenly over world_size "
                f"{world_size}: the file count must be a multiple of the world size"
            )
        self.files = list(files)
        self.kind: SampleKind = kind
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.drop_last = drop_last
        self.read_history_ts = read_history_ts
        self.epoch = 0
        self._columns = sample_columns(kind, read_history_ts, read_values, read_context)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle. Read at ``__iter__`` time, so it reaches worker processes
        as long as they are started per epoch (``persistent_workers=False``, as in
        ``make_loader``)."""
        self.epoch = epoch

    def loader(self, num_workers: int = 0, pin_memory: bool = False) -> Iterable[Batch]:
        """What the training loop iterates each epoch: a DataLoader with ``num_workers``."""
        return make_loader(self, num_workers, pin_memory)

    def rank_files(self) -> list[ShardFile]:
        """This rank's files, in manifest order."""
        return self.files[self.rank :: self.world_size]

    def rows_for_rank(self) -> int:
        """Rows this rank reads per epoch, by the manifest (including any dropped last rows)."""
        return sum(f.rows for f in self.rank_files())

    def batches_for_rank(self, num_workers: int = 0) -> int:
        """Batches this rank yields per epoch through a loader with ``num_workers`` workers, by
        the manifest: each worker batches its own files' rows, ending on one short batch
        (dropped with ``drop_last``). Ranks can differ; collectives need the same step count.
        """
        files = self.rank_files()
        total = 0
        for worker in range(max(num_workers, 1)):
            rows = sum(f.rows for f in files[worker :: max(num_workers, 1)])
            full, rest = divmod(rows, self.batch_size)
            total += full + (1 if rest and not self.drop_last else 0)
        return total

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        _, generator = self._epoch_randomness(worker)
        files = self._epoch_files(self.rank_files()[worker::workers], generator)
        # Arrow's decode threads pay off in the main process; worker processes already run in
        # parallel, and more threads there only contend for the same cores.
        decoded = self._chunks(files, use_threads=info is None)
        for chunk in batch_chunks(
            decoded, self.batch_size, self.shuffle_buffer, generator, self.drop_last
        ):
            if info is not None:
                # A worker process ships the narrow arrays; the main process gets a Batch.
                yield _WireBatch(chunk)  # type: ignore[misc]
            else:
                yield make_batch(chunk)

    def _epoch_randomness(self, worker: int) -> tuple[np.random.SeedSequence, torch.Generator]:
        """The seeds and shuffle generator of one (seed, epoch, rank, worker): reproducible, and
        no two workers or ranks share an order."""
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank, worker])
        generator = torch.Generator().manual_seed(int(seeds.generate_state(1, np.uint64)[0]) >> 1)
        return seeds, generator

    def _epoch_files(self, files: list[ShardFile], generator: torch.Generator) -> list[ShardFile]:
        """``files`` in this epoch's order (as given when shuffling is off)."""
        if not self.shuffle_buffer or not files:
            return files
        return [files[i] for i in torch.randperm(len(files), generator=generator).tolist()]

    def _chunks(
        self, files: Sequence[ShardFile], use_threads: bool = True
    ) -> Iterator[tuple[Chunk, int]]:
        """Decoded column chunks of ``files``, in order; counts rows per file and, once every
        file is read, raises ShortReadError for any count that differs from the manifest."""
        names = [c.name for c in self._columns]
        widths: dict[str, int] = {}
        read = [0] * len(files)  # rows read per file, in ``files`` order
        for i, shard in enumerate(files):
            # An open file, not a path plus filesystem=, which pyarrow 12 (the Horovod
            # environment) does not take; ParquetFile leaves a handle it was given open.
            filesystem, path = arrow_path(shard.path)
            with filesystem.open_input_file(path) as handle, pq.ParquetFile(handle) as reader:
                missing = [name for name in names if name not in reader.schema_arrow.names]
                if missing:  # e.g. `value`, which exports before it existed do not hold
                    raise ValueError(
                        f"{shard.path} has no column {missing[0]!r}: re-run `recpipe export` "
                        "to write samples with it"
                    )
                for record_batch in reader.iter_batches(
                    batch_size=READ_BATCH_ROWS, columns=names, use_threads=use_threads
                ):
                    rows = record_batch.num_rows
                    if not rows:
                        continue
                    chunk = {
                        c.field: _to_numpy(record_batch.column(c.name), c, shard.path, widths)
                        for c in self._columns
                    }
                    read[i] += rows
                    yield chunk, rows
        bad = [(f, n) for f, n in zip(files, read, strict=True) if n != f.rows]
        if bad:
            detail = "; ".join(f"{f.path}: manifest has {f.rows} rows, read {n}" for f, n in bad)
            raise ShortReadError(
                f"rank {self.rank}: {len(bad)} sample file(s) do not match the manifest ({detail})"
            )


def batch_chunks(
    chunks: Iterator[tuple[Chunk, int]],
    batch_size: int,
    shuffle_buffer: int,
    generator: torch.Generator,
    drop_last: bool = False,
) -> Iterator[Chunk]:
    """Batches of ``batch_size`` rows from decoded ``(chunk, rows)`` pairs.

    ``chunks`` is consumed in a background thread (see ``_prefetch``), so any error it raises
    (such as row accounting at its end) reaches the caller in order. Rows go through a
    ``shuffle_buffer``-row shuffle buffer, or stay in order when it is 0. Only the last batch
    can be short; ``drop_last`` drops it (its rows were still read and counted).
    """
    stream = _RowStream(_prefetch(chunks))
    if shuffle_buffer:
        if stream.peek() is None:  # no rows at all (peek() has run the accounting)
            return
        capacity = max(shuffle_buffer, batch_size)
        batches = _ShuffleBuffer(stream, capacity, batch_size, generator).batches()
    else:
        batches = (_concat(p) for p in iter(lambda: stream.read(batch_size), []))
    for batch in batches:
        if drop_last and len(batch["users"]) < batch_size:
            continue
        yield batch


_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _prefetch(items: Iterator[Any], depth: int = PREFETCH_CHUNKS) -> Iterator[Any]:
    """``items``, produced by a background thread up to ``depth`` ahead.

    Parquet decoding releases the GIL, so the next chunk decodes on another core while this
    thread shuffles and batches the current one. Errors are re-raised here, in order.
    """
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(_Failure(error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # release open files now, not at garbage collection

    thread = threading.Thread(target=run, name="arrow-loader-prefetch", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()  # an abandoned iteration lets the thread finish its chunk and exit


def make_loader(
    dataset: ArrowSampleDataset, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over ``dataset`` that yields its ``Batch``es unchanged.

    ``batch_size=None`` disables automatic batching (the dataset batches itself) and the
    identity collate keeps each batch as is. Workers are started per epoch
    (``persistent_workers=False``) so that they see ``set_epoch``. With light rows (pairwise,
    pointwise) ``num_workers=0`` is usually fastest: decoding already overlaps batching in a
    background thread, and a worker pays for shipping every batch through a pipe.
    """
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=_identity,
        persistent_workers=False,
    )


def _identity(batch: Any) -> Any:
    return batch
