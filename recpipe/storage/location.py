"""Where a piece of state lives: a local path or a Hadoop-style URI, with path algebra only.

A :class:`Location` joins, splits and compares like :class:`pathlib.PurePosixPath`, but it
has no I/O methods and no ``__fspath__``: reading or writing it goes through
:mod:`recpipe.storage`, so the same code works for ``/data/recpipe``, ``hdfs://nn/recpipe``,
``viewfs://cluster/recpipe`` or ``s3a://bucket/recpipe``.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Union

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/]*)(.*)$")


def scheme_of(location: str | Location) -> str | None:
    """``hdfs`` for ``hdfs://nn/x``; None for a plain path (``file://`` gives ``file``)."""
    if isinstance(location, Location):
        return location.scheme
    match = _SCHEME.match(location)
    return match.group(1).lower() if match else None


class Location:
    """A local path (``scheme`` ``file``) or a URI ``scheme://authority/path``, normalised.

    Plain paths become absolute (``~`` expanded); ``file:///x`` equals ``/x``.
    """

    __slots__ = ("authority", "path", "scheme")
    scheme: str
    authority: str
    path: str

    def __init__(self, text: str | os.PathLike[str] | Location) -> None:
        if isinstance(text, Location):
            self.scheme, self.authority, self.path = text.scheme, text.authority, text.path
            return
        raw = os.fspath(text)
        match = _SCHEME.match(raw)
        if match:
            scheme, authority, path = match.group(1).lower(), match.group(2), match.group(3)
        else:
            scheme, authority, path = "file", "", os.path.abspath(os.path.expanduser(raw))
        if scheme == "file" and authority not in ("", "localhost"):
            raise ValueError(f"{raw}: file:// URIs name no host (use file:///path)")
        if scheme == "file":
            authority = ""
        self.scheme = scheme
        self.authority = authority
        # normpath keeps a leading '//' (POSIX allows it); recpipe never means that.
        normal = posixpath.normpath(path or "/")
        self.path = "/" + normal.lstrip("/") if normal != "." else "/"

    # -- identity -------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """Whether this is a path on the local file system."""
        return self.scheme == "file"

    @property
    def uri(self) -> str:
        """The full URI (``file:///abs`` for local paths), as Spark and Hadoop take it."""
        # Not Path.as_uri(): that percent-encodes, and Hadoop takes `=` and spaces literally.
        return f"{self.scheme}://{self.authority}{self.path}"

    def local_path(self) -> Path:
        """The local path; ValueError for a remote location."""
        if not self.is_local:
            raise ValueError(f"{self} is not a local path")
        return Path(self.path)

    def __str__(self) -> str:
        return self.path if self.is_local else self.uri

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def _key(self) -> tuple[str, str, str]:
        return (self.scheme, self.authority, self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __lt__(self, other: Location) -> bool:
        return self._key() < other._key()

    # -- path algebra ---------------------------------------------------------------------
    def _with_path(self, path: str) -> Location:
        new = object.__new__(Location)
        new.scheme, new.authority = self.scheme, self.authority
        normal = posixpath.normpath(path or "/")
        new.path = "/" + normal.lstrip("/") if normal != "." else "/"
        return new

    def joinpath(self, *parts: str) -> Location:
        """This location with relative ``parts`` appended (absolute parts are refused)."""
        path = self.path
        for part in parts:
            part = os.fspath(part)
            if part.startswith("/") or _SCHEME.match(part):
                raise ValueError(f"cannot append absolute {part!r} to {self}")
            path = posixpath.join(path, part)
        return self._with_path(path)

    def __truediv__(self, part: str) -> Location:
        return self.joinpath(part)

    @property
    def name(self) -> str:
        """The last path component ('' for the root)."""
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        """The file extension of :attr:`name`, with its dot ('' when there is none)."""
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> Location:
        """The containing folder (the root is its own parent)."""
        return self._with_path(posixpath.dirname(self.path))

    def with_name(self, name: str) -> Location:
        """This location with its last component replaced by ``name``."""
        return self.parent / name

    def is_relative_to(self, base: Location) -> bool:
        """Whether this location is ``base`` or below it."""
        if (self.scheme, self.authority) != (base.scheme, base.authority):
            return False
        return self.path == base.path or self.path.startswith(base.path.rstrip("/") + "/")

    def relative_to(self, base: Location) -> str:
        """The relative path from ``base`` down to this location; ValueError if not below."""
        if not self.is_relative_to(base):
            raise ValueError(f"{self} is not below {base}")
        return posixpath.relpath(self.path, base.path)


LocationLike = Union[str, "os.PathLike[str]", Location]


def as_location(value: LocationLike) -> Location:
    """``value`` as a :class:`Location` (a Location is returned as it is)."""
    return value if isinstance(value, Location) else Location(value)
