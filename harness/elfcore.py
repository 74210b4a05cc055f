"""ELF core files of an L1's physical memory: read one (QEMU's ``dump-guest-memory``),
write one (the fake machine, tests).

QEMU's dump with ``paging: false`` holds one ``PT_LOAD`` segment per RAM block whose
``p_paddr`` is the guest-physical address and whose bytes are in the file at
``p_offset``, plus a ``PT_NOTE`` with each CPU's state (and the guest's vmcoreinfo
when it has one).  :class:`CoreFile` is a :class:`~harness.mem.PhysMem` over the
``PT_LOAD`` segments: exactly the bytes asked for, or
:class:`~harness.errors.MemoryReadError` outside every segment.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "l1.core"
>>> write_core(p, [(0x2000, b"SLAT" + bytes(4092))], machine=EM_X86_64)
>>> with CoreFile(p) as core:
...     core.read(0x2000, 4), core.segments
(b'SLAT', [(8192, 12288)])
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from harness.errors import InfraError, MemoryReadError

__all__ = ["CoreFile", "write_core", "EM_X86_64", "EM_AARCH64", "CoreFileError"]

EM_X86_64 = 62
EM_AARCH64 = 183
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")


class CoreFileError(InfraError):
    """Not an ELF64 little-endian core file (or a truncated one)."""


class CoreFile:
    """The physical memory in an ELF64 core (read-only, memory-mapped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("rb")
        try:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.machine, self._loads = self._parse()
        except (OSError, ValueError, struct.error) as e:
            self._file.close()
            raise CoreFileError(f"{path}: not a readable ELF core: {e}") from e

    def _parse(self) -> tuple[int, list[tuple[int, int, int, int]]]:
        ident, etype, machine, _, _, phoff, _, _, _, phentsize, phnum, _, _, _ = \
            EHDR.unpack_from(self._map, 0)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1 or etype != ET_CORE:
            raise ValueError("not an ELF64 little-endian ET_CORE file")
        loads = []
        for i in range(phnum):
            ptype, _, off, _, paddr, filesz, memsz, _ = PHDR.unpack_from(
                self._map, phoff + i * phentsize)
            if ptype == PT_LOAD and memsz:
                if off + filesz > len(self._map):
                    raise ValueError(f"segment {i} ends beyond the file")
                loads.append((paddr, memsz, off, filesz))
        return machine, sorted(loads)

    @property
    def segments(self) -> list[tuple[int, int]]:
        """``(start, end)`` physical ranges the core holds."""
        return [(p, p + m) for p, m, _, _ in self._loads]

    def read(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes at physical *addr*, from one segment."""
        for paddr, memsz, off, filesz in self._loads:
            if paddr <= addr and addr + size <= paddr + memsz:
                rel = addr - paddr
                data = self._map[off + rel:off + min(rel + size, filesz)]
                return data + bytes(size - len(data))
        raise MemoryReadError(addr, size, f"not in the core file {self.path.name}")

    def close(self) -> None:
        """Unmap and close."""
        self._map.close()
        self._file.close()

    def __enter__(self) -> CoreFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_core(path: Path, segments: Iterable[tuple[int, bytes]], *,
               machine: int = EM_X86_64) -> None:
    """An ELF64 core with one ``PT_LOAD`` per ``(physical address, bytes)``."""
    segs = list(segments)
    phoff = EHDR.size
    data_off = phoff + PHDR.size * len(segs)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    out = bytearray(EHDR.pack(ident, ET_CORE, machine, 1, 0, phoff, 0, 0, EHDR.size,
                              PHDR.size, len(segs), 0, 0, 0))
    pos = data_off
    for paddr, data in segs:
        out += PHDR.pack(PT_LOAD, 6, pos, 0, paddr, len(data), len(data), 0x1000)
        pos += len(data)
    with path.open("wb") as f:
        f.write(out)
        for _, data in segs:
            f.write(data)
