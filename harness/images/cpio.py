"""A tiny writer for the ``newc`` cpio format the Linux initramfs unpacker reads.

Entries are written with uid/gid 0 and mtime 0, so the archive depends only on
its contents:

>>> archive = CpioWriter(); archive.directory("bin"); len(archive.finish()) % 4
0
"""

from __future__ import annotations

import stat

__all__ = ["CpioWriter"]

_MAGIC = b"070701"


def _pad4(data: bytes) -> bytes:
    """*data* padded with NULs to a multiple of 4 bytes."""
    return data + b"\0" * (-len(data) % 4)


class CpioWriter:
    """Accumulates newc entries in memory; :meth:`finish` returns the archive."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"",
               rdev: tuple[int, int] = (0, 0)) -> None:
        """Append one entry with header, name and data."""
        name = name.strip("/")
        if name in self._names:
            raise ValueError(f"cpio entry {name!r} added twice")
        self._names.add(name)
        raw_name = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(raw_name), 0)
        header = _MAGIC + b"".join(b"%08x" % field for field in fields)
        self._parts.append(_pad4(header + raw_name) + _pad4(data))
        self._ino += 1

    def directory(self, name: str, perm: int = 0o755) -> None:
        """Add a directory."""
        self._entry(name, stat.S_IFDIR | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """Add a regular file."""
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link to *target*."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        """Add a character device node (e.g. ``dev/console`` 5:1)."""
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        """The complete archive, with its ``TRAILER!!!`` entry."""
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)
