"""Where an x86-64 kernel maps all of physical memory: its direct map.

Linux (``page_offset_base``), FreeBSD (DMAP) and OpenBSD (PMAP_DIRECT) map
every physical page at one fixed offset in the kernel half.  A debugger that
reads only *linear* memory fast (Bochs's ``writemem``) reads physical memory
fast through it.  :func:`find_direct_map` finds the offset from the halted
CPU's own page tables, knowing nothing of the kernel: the lowest kernel-half
linear address that is the start of a 1 GiB region whose first page maps
physical 0.  (Linux aligns ``page_offset_base`` to 1 GiB even with KASLR.)

It reads one table per present top-level entry of the kernel half, plus the
first entry below each present PDPTE: tens of small reads.

>>> from harness.mem import DictMem
>>> m = DictMem(size=1 << 20)
>>> m.write_u64(0x1000 + 8 * 273, 0x2003)        # PML4[273] -> PDPT at 0x2000
>>> m.write_u64(0x2000 + 8 * 2, 0x0000_0000_0000_0083)   # PDPT[2]: 1 GiB page at 0
>>> hex(find_direct_map(m, cr3=0x1000, cr4=0))
'0xffff888080000000'
"""

from __future__ import annotations

from harness.mem import PhysMem, read_u64, read_u64s

__all__ = ["find_direct_map", "CR4_LA57"]

CR4_LA57 = 1 << 12
PRESENT, PS = 1 << 0, 1 << 7
FRAME = 0x000F_FFFF_FFFF_F000
ENTRIES = 512


def _va(indexes: list[int], levels: int) -> int:
    """The canonical linear address whose top *len(indexes)* table indexes are given."""
    va = 0
    for i, idx in enumerate(indexes):
        va |= idx << (12 + 9 * (levels - 1 - i))
    top = 1 << (12 + 9 * levels - 1)
    return va | (~(top - 1) & ((1 << 64) - 1)) if va & top else va


def _maps_zero_first(mem: PhysMem, entry: int, level: int) -> bool:
    """Does the region of this present entry (level 3 = PDPTE) start by mapping PA 0?"""
    while True:
        if level == 1 or entry & PS:
            return entry & FRAME == 0
        entry = read_u64(mem, entry & FRAME)
        level -= 1
        if not entry & PRESENT:
            return False


def _search(mem: PhysMem, table: int, level: int, prefix: list[int], levels: int,
            first: int) -> int | None:
    """Depth-first, in address order, from entry *first* of *table* at *level* (>= 3)."""
    for idx, entry in enumerate(read_u64s(mem, table, ENTRIES)[first:], start=first):
        if not entry & PRESENT:
            continue
        if level == 3:
            if _maps_zero_first(mem, entry, 3):
                return _va([*prefix, idx], levels)
        elif not entry & PS:
            found = _search(mem, entry & FRAME, level - 1, [*prefix, idx], levels, 0)
            if found is not None:
                return found
    return None


def find_direct_map(mem: PhysMem, cr3: int, cr4: int) -> int | None:
    """The direct map's base linear address, or None (no kernel-half region maps PA 0)."""
    levels = 5 if cr4 & CR4_LA57 else 4
    return _search(mem, cr3 & FRAME, levels, [], levels, ENTRIES // 2)
