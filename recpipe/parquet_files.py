"""Parquet files as recorded and verified state: data files, footer digests, checked reads.

A published file's content is vouched for in two layers, both cheap enough for every read:
the SHA-256 of its footer (schema, row groups, their offsets, sizes and statistics), recorded
when it is committed and compared before it is read, and the CRC32 of every data page, which
Spark's Parquet writer stores and readers verify (pyarrow with ``page_checksum_verification``,
Spark with ``parquet.page.verify-checksum.enabled``). Together they catch a replaced,
truncated or edited file without hashing whole partitions on each lookup.
"""

from __future__ import annotations

import hashlib

import pyarrow.dataset as pads

from recpipe import storage
from recpipe.storage import Location, LocationLike, as_location

_MAGIC = b"PAR1"


class NotParquetError(ValueError):
    """A file that should be Parquet has no valid footer."""


def data_files(folder: LocationLike) -> list[Location]:
    """Parquet data files of a version folder (``_``/``.`` files are metadata)."""
    return [p for p in storage.glob(folder, "*.parquet") if not p.name.startswith(("_", "."))]


def footer_sha256(path: LocationLike) -> str:
    """SHA-256 of the file's footer: metadata, its length and the closing magic bytes."""
    with storage.open_input(path) as handle:
        size = handle.seek(0, 2)
        if size < 12:
            raise NotParquetError(f"{path}: {size} bytes, too short for Parquet")
        handle.seek(size - 8)
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != _MAGIC or length + 12 > size:
            raise NotParquetError(f"{path}: no Parquet footer")
        handle.seek(size - 8 - length)
        return hashlib.sha256(handle.read(length + 8)).hexdigest()


def verified_dataset(source: LocationLike | list[Location]) -> pads.Dataset:
    """A pyarrow dataset whose reads check every data page's CRC (where the writer stored one).

    ``source`` is a folder or a list of files, all on one file system.
    """
    try:
        options = pads.ParquetFragmentScanOptions(page_checksum_verification=True)
    except TypeError:
        # pyarrow < 14 (the Horovod + Petastorm environment pins 12) cannot check page CRCs;
        # the footer digests are still compared by the callers.
        options = pads.ParquetFragmentScanOptions()
    fmt = pads.ParquetFileFormat(default_fragment_scan_options=options)
    locations = source if isinstance(source, list) else [as_location(source)]
    if not locations:
        raise ValueError("no Parquet files to read")
    filesystem, _ = storage.arrow_path(locations[0])
    paths = [storage.arrow_path(loc)[1] for loc in locations]
    target = paths if isinstance(source, list) else paths[0]
    return pads.dataset(target, filesystem=filesystem, format=fmt)
