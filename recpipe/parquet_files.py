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
from pathlib import Path

import pyarrow.dataset as pads

_MAGIC = b"PAR1"


class NotParquetError(ValueError):
    """A file that should be Parquet has no valid footer."""


def data_files(folder: Path) -> list[Path]:
    """Parquet data files of a version folder (``_``/``.`` files are metadata)."""
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(("_", ".")))


def footer_sha256(path: Path) -> str:
    """SHA-256 of the file's footer: metadata, its length and the closing magic bytes."""
    with open(path, "rb") as handle:
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


def verified_dataset(source: Path | str | list[str]) -> pads.Dataset:
    """A pyarrow dataset whose reads check every data page's CRC (where the writer stored one)."""
    try:
        options = pads.ParquetFragmentScanOptions(page_checksum_verification=True)
    except TypeError:
        # pyarrow < 14 (the Horovod + Petastorm environment pins 12) cannot check page CRCs;
        # the footer digests are still compared by the callers.
        options = pads.ParquetFragmentScanOptions()
    fmt = pads.ParquetFileFormat(default_fragment_scan_options=options)
    return pads.dataset(source if isinstance(source, list) else str(source), format=fmt)
