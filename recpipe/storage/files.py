"""Every file operation on recpipe state, for any :class:`Location` (JVM-free, pyarrow.fs).

Missing files raise :class:`FileNotFoundError`, as the built-in calls do. Writes of whole
objects are atomic for readers: a local file is written beside its target and moved over it
(a file move, never a folder rename); an object store makes a single PUT visible whole.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, ParamSpec, TypeVar, cast

import pyarrow.fs as pafs

from recpipe.storage.filesystems import resolve, unreachable
from recpipe.storage.location import Location, LocationLike, as_location

P = ParamSpec("P")
R = TypeVar("R")


def _one_line_errors(operation: Callable[P, R]) -> Callable[P, R]:
    """Turn the plain ``OSError`` a file system raises when it cannot be reached (network,
    endpoint, credentials) into one :class:`StorageError` line naming the location; missing
    files and other specific errors pass through as they are."""

    @functools.wraps(operation)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return operation(*args, **kwargs)
        except OSError as exc:
            if type(exc) is not OSError:
                raise
            raise unreachable(as_location(cast(LocationLike, args[0])), exc) from None

    return wrapper


@dataclass(frozen=True)
class Entry:
    """One listed file or folder."""

    location: Location
    size: int  # bytes; 0 for folders
    is_dir: bool

    @property
    def name(self) -> str:
        """The last component of the location."""
        return self.location.name


def _info(location: Location) -> pafs.FileInfo:
    fs, path = resolve(location)
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise unreachable(location, exc) from None


def exists(location: LocationLike) -> bool:
    """Whether a file or folder is there."""
    return _info(as_location(location)).type != pafs.FileType.NotFound


def is_dir(location: LocationLike) -> bool:
    """Whether a folder is there (on object stores: whether any key lies below)."""
    return _info(as_location(location)).type == pafs.FileType.Directory


def is_file(location: LocationLike) -> bool:
    """Whether a file is there."""
    return _info(as_location(location)).type == pafs.FileType.File


@_one_line_errors
def size(location: LocationLike) -> int:
    """Length of a file in bytes; FileNotFoundError if absent."""
    info = _info(as_location(location))
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(str(location))
    return int(info.size)


@_one_line_errors
def read_bytes(location: LocationLike) -> bytes:
    """A whole file; FileNotFoundError if absent."""
    loc = as_location(location)
    fs, path = resolve(loc)
    try:
        with fs.open_input_stream(path) as stream:
            return cast(bytes, stream.read())
    except FileNotFoundError:
        raise
    except OSError:
        if _info(loc).type == pafs.FileType.NotFound:
            raise FileNotFoundError(str(loc)) from None
        raise


def read_text(location: LocationLike) -> str:
    """A whole file as UTF-8 text; FileNotFoundError if absent."""
    return read_bytes(location).decode("utf-8")


def read_json(location: LocationLike) -> Any:
    """A JSON file; FileNotFoundError if absent, ValueError if it does not parse."""
    return json.loads(read_text(location))


@_one_line_errors
def write_bytes(location: LocationLike, data: bytes) -> None:
    """Replace a file with ``data`` in one step readers cannot see half done."""
    _replace(location, lambda handle: handle.write(data), data)


@_one_line_errors
def write_streamed(location: LocationLike, write: Callable[[BinaryIO], object]) -> None:
    """Replace a file with what ``write`` writes to a binary handle, in one step readers
    cannot see half done. A local file is streamed to a temporary file beside it (a
    checkpoint of gigabytes is never held in memory whole); elsewhere the content is
    gathered in memory first and sent in one write, so that a ``write`` failing part-way
    publishes nothing (an object store's stream cannot be aborted: closing it publishes)."""
    _replace(location, write, None)


def _replace(
    location: LocationLike, write: Callable[[BinaryIO], object], content: bytes | None
) -> None:
    """Write a local file through ``write`` beside its target, then move it over; send any
    other one as one write of ``content`` (gathered through ``write`` when None)."""
    loc = as_location(location)
    fs, path = resolve(loc)
    parent = path.rsplit("/", 1)[0] or "/"
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        temp = f"{parent}/.{loc.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(temp, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)
        return
    if content is None:
        buffer = io.BytesIO()
        write(buffer)
        content = buffer.getvalue()
    with fs.open_output_stream(path) as stream:  # one object, visible when closed
        stream.write(content)


def write_text(location: LocationLike, text: str) -> None:
    """Replace a file with UTF-8 ``text`` atomically (see :func:`write_bytes`)."""
    write_bytes(location, text.encode("utf-8"))


def write_json(location: LocationLike, value: Any) -> None:
    """Replace a file with ``value`` as indented JSON, atomically."""
    write_text(location, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


@_one_line_errors
def create_exclusive(location: LocationLike, data: bytes) -> bool:
    """Create a file only if none is there; False when one already exists.

    Atomic on local and mounted file systems (``O_EXCL``). Object stores without conditional
    writes get check-then-write, which two writers racing within the same moment can both
    pass: run one scheduler per root there (Airflow's ``max_active_runs``).
    """
    loc = as_location(location)
    fs, path = resolve(loc)
    fs.create_dir(path.rsplit("/", 1)[0] or "/", recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    with fs.open_output_stream(path) as stream:
        stream.write(data)
    return True


@_one_line_errors
def delete(location: LocationLike, missing_ok: bool = True) -> None:
    """Remove one file."""
    loc = as_location(location)
    fs, path = resolve(loc)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


@_one_line_errors
def remove_tree(location: LocationLike) -> None:
    """Remove a folder and everything below it (nothing happens when it is absent)."""
    loc = as_location(location)
    fs, path = resolve(loc)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


@_one_line_errors
def copy_file(source: LocationLike, destination: LocationLike) -> None:
    """Copy one file; the file system copies it where it can (an object store server-side),
    else it is streamed through this process, never held whole. Readers of ``destination``
    must not rely on it before the call returns (write into a folder nothing points at yet)."""
    src, dst = as_location(source), as_location(destination)
    if _info(src).type != pafs.FileType.File:  # object stores report a missing key vaguely
        raise FileNotFoundError(str(src))
    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    makedirs(dst.parent)
    if src_fs.equals(dst_fs):
        src_fs.copy_file(src_path, dst_path)
        return
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


@_one_line_errors
def makedirs(location: LocationLike) -> None:
    """Create a folder and its parents (object stores need none; this is then a no-op)."""
    loc = as_location(location)
    fs, path = resolve(loc)
    fs.create_dir(path, recursive=True)


@_one_line_errors
def list_dir(location: LocationLike, recursive: bool = False) -> list[Entry]:
    """Entries below a folder, sorted by location; [] when the folder is absent."""
    loc = as_location(location)
    fs, path = resolve(loc)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    entries = []
    base = path.rstrip("/")
    for info in fs.get_file_info(selector):
        rest = info.path[len(base) :].lstrip("/") if info.path.startswith(base) else info.base_name
        entries.append(
            Entry(
                location=loc.joinpath(rest),
                size=int(info.size or 0) if info.type == pafs.FileType.File else 0,
                is_dir=info.type == pafs.FileType.Directory,
            )
        )
    return sorted(entries, key=lambda e: e.location)


def glob(location: LocationLike, pattern: str) -> list[Location]:
    """Direct children of a folder whose names match ``pattern`` (fnmatch), sorted."""
    return [e.location for e in list_dir(location) if fnmatch.fnmatchcase(e.name, pattern)]


@contextlib.contextmanager
def open_input(location: LocationLike) -> Iterator[BinaryIO]:
    """A seekable binary reader (for Parquet footers and torch checkpoints)."""
    loc = as_location(location)
    fs, path = resolve(loc)
    with fs.open_input_file(path) as handle:
        yield cast(BinaryIO, handle)


def arrow_path(location: LocationLike) -> tuple[pafs.FileSystem, str]:
    """The ``pyarrow.fs`` file system and path for pyarrow's own readers and writers."""
    return resolve(as_location(location))
