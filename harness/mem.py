"""The small physical-memory interface every walker and model reads through.

A walker never imports GDB or QEMU code: it takes any object with
``read(addr, size) -> bytes`` that either returns exactly *size* bytes or
raises :class:`~harness.errors.MemoryReadError`.  Tests use :class:`DictMem`;
a live run reads through :class:`harness.target.PhysView` wrapped in :class:`PageCache`.
"""

from __future__ import annotations

import struct
from typing import Protocol

from harness.errors import MemoryReadError

__all__ = ["PhysMem", "DictMem", "PageCache", "read_u64", "read_u64s", "PAGE_SIZE"]

PAGE_SIZE = 4096


class PhysMem(Protocol):
    """Read-only physical memory."""

    def read(self, addr: int, size: int) -> bytes:
        """Return exactly *size* bytes at physical *addr*, or raise MemoryReadError."""
        ...


class DictMem:
    """Sparse memory of 4 KiB pages held in a dict, for tests and recorded images.

    Pages not in the dict read as zeros as long as they lie below *size*;
    anything at or beyond *size* raises, like a read past the end of RAM.

    >>> m = DictMem(size=1 << 20); m.write_u64(0x1000, 0x37); read_u64(m, 0x1000)
    55
    """

    def __init__(self, size: int = 1 << 32,
                 pages: dict[int, bytes | bytearray] | None = None) -> None:
        self.size = size
        self.pages: dict[int, bytearray] = {}
        self.reads = 0
        for base, data in (pages or {}).items():
            self.write(base, bytes(data))

    def _page(self, pfn: int) -> bytearray:
        page = self.pages.get(pfn)
        if page is None:
            page = self.pages[pfn] = bytearray(PAGE_SIZE)
        return page

    def read(self, addr: int, size: int) -> bytes:
        """Read *size* bytes; raises beyond ``self.size``."""
        self.reads += 1
        if addr < 0 or size < 0 or addr + size > self.size:
            raise MemoryReadError(addr, size, f"beyond memory size {self.size:#x}")
        out = bytearray()
        while size:
            off = addr % PAGE_SIZE
            n = min(size, PAGE_SIZE - off)
            page = self.pages.get(addr // PAGE_SIZE)
            out += page[off:off + n] if page is not None else bytes(n)
            addr += n
            size -= n
        return bytes(out)

    def write(self, addr: int, data: bytes) -> None:
        """Write *data* at *addr* (tests build tables with this)."""
        if addr < 0 or addr + len(data) > self.size:
            raise MemoryReadError(addr, len(data), "write beyond memory size")
        pos = 0
        while pos < len(data):
            off = (addr + pos) % PAGE_SIZE
            n = min(len(data) - pos, PAGE_SIZE - off)
            self._page((addr + pos) // PAGE_SIZE)[off:off + n] = data[pos:pos + n]
            pos += n

    def write_u64(self, addr: int, value: int) -> None:
        """Write one little-endian 64-bit entry."""
        self.write(addr, struct.pack("<Q", value & (2**64 - 1)))


class PageCache:
    """Caches whole pages of a slower :class:`PhysMem` (a GDB session).

    Reads are widened to page boundaries, so walking a table page costs one
    remote read instead of 512.  Call :meth:`invalidate` after the guest ran.
    """

    def __init__(self, backend: PhysMem, page_size: int = PAGE_SIZE) -> None:
        self.backend = backend
        self.page_size = page_size
        self._pages: dict[int, bytes] = {}
        self.misses = 0

    def read(self, addr: int, size: int) -> bytes:
        """Read through the cache; a failed backend read raises and caches nothing."""
        ps = self.page_size
        first, last = addr // ps, (addr + size - 1) // ps if size else addr // ps
        chunks = [self._get(pfn) for pfn in range(first, last + 1)]
        blob = b"".join(chunks)
        off = addr - first * ps
        return blob[off:off + size]

    def _get(self, pfn: int) -> bytes:
        page = self._pages.get(pfn)
        if page is None:
            self.misses += 1
            page = self.backend.read(pfn * self.page_size, self.page_size)
            if len(page) != self.page_size:
                raise MemoryReadError(pfn * self.page_size, self.page_size, "short read")
            self._pages[pfn] = page
        return page

    def invalidate(self) -> None:
        """Forget every cached page."""
        self._pages.clear()


def read_u64(mem: PhysMem, addr: int) -> int:
    """One little-endian 64-bit value."""
    return int(struct.unpack("<Q", mem.read(addr, 8))[0])


def read_u64s(mem: PhysMem, addr: int, count: int) -> tuple[int, ...]:
    """*count* consecutive little-endian 64-bit values (a whole table page)."""
    return struct.unpack(f"<{count}Q", mem.read(addr, 8 * count))
