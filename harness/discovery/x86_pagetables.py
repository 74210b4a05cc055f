"""A process's own (first-level) x86-64 page tables, walked in L1 memory.

The independent truth about the frames behind a VM's memory on a BSD L1: the
VMM process maps each guest range at an address of its own (``vmr_va`` on
OpenBSD, the ``mmap`` of a bhyve ``vm_mem``), so the frame behind GPA ``g``
of a range ``(gpa, size, hva)`` is whatever the *process's* page tables map
at ``hva + (g - gpa)``.  Those tables are the process pmap's (OpenBSD
``pm_pdirpa``, FreeBSD ``pm_cr3``), not the nested ones, so agreeing with
them checks the nested tables against something they do not contain.

This is the plain x86-64 4-level walk (Intel SDM Vol. 3A 4.5; AMD APM Vol. 2
5.3): bit 0 P, bit 7 PS at the PDPT (1 GiB) and PD (2 MiB) levels, the frame
in bits 51:12.  Pure: it reads through any ``read(addr, size)`` physical memory.

>>> from harness.mem import DictMem
>>> m = DictMem(size=1 << 24)
>>> for table, nxt in ((0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)):
...     m.write(table, (nxt | 1).to_bytes(8, "little"))
>>> m.write(0x4000 + 8 * 5, (0x9000 | 1).to_bytes(8, "little"))
>>> hex(translate(m, 0x1000, 0x5123))
'0x9123'
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.errors import InfraError
from harness.mem import PAGE_SIZE, PhysMem, read_u64

__all__ = ["translate", "range_frames", "PG_V", "PG_PS", "PG_FRAME"]

PG_V = 1 << 0
PG_PS = 1 << 7
PG_FRAME = 0x000F_FFFF_FFFF_F000
LEVELS = 4
USER_TOP = 1 << 47                 # canonical lower half (4-level paging)


def translate(pmem: PhysMem, pml4: int, va: int) -> int | None:
    """The physical address *va* maps to under the tables rooted at *pml4*, or None."""
    if not 0 <= va < USER_TOP:
        raise InfraError(f"{va:#x} is not a user address of a 4-level address space")
    table = pml4 & PG_FRAME
    for level in range(LEVELS, 0, -1):
        shift = 12 + 9 * (level - 1)
        entry = read_u64(pmem, table + 8 * ((va >> shift) & 0x1FF))
        if not entry & PG_V:
            return None
        if level in (2, 3) and entry & PG_PS:
            size = 1 << shift
            return (entry & PG_FRAME & ~(size - 1)) | (va & (size - 1))
        table = entry & PG_FRAME
    return table | (va & (PAGE_SIZE - 1))


def range_frames(pmem: PhysMem, pml4: int,
                 ranges: Iterable[tuple[int, int, int]]) -> dict[int, int]:
    """GPA page -> L1 frame for every page of *ranges* ``(gpa, size, hva)`` that the
    process maps (pages it does not map are left out: not resident).
    """
    out: dict[int, int] = {}
    for gpa, size, hva in ranges:
        if gpa % PAGE_SIZE or size % PAGE_SIZE or hva % PAGE_SIZE:
            raise InfraError(f"range gpa {gpa:#x} size {size:#x} hva {hva:#x} is not "
                             "page aligned")
        for off in range(0, size, PAGE_SIZE):
            pa = translate(pmem, pml4, hva + off)
            if pa is not None:
                out[gpa + off] = pa
    return out
