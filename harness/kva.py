"""Kernel virtual addresses of a stopped L1, translated through its own page tables.

A live Target asks the emulator; a saved core (:mod:`harness.replay`) has only
physical memory and the registers saved beside it, so the translation is done here,
the way the CPU does it, per architecture (one :class:`VaWalker` record each in
:data:`VA_WALKERS`, which also lists the registers a core must keep):

* x86-64: CR3 -> PML5 (CR4.LA57) / PML4 -> PDPT (1 GiB pages) -> PD (2 MiB) -> PT;
  bits 51:12 of an entry are the next table or the frame;
* arm64, 4 KiB granule: TTBR1 and TCR of the exception level the kernel runs at
  (``TTBR1_EL2``/``TCR_EL2`` under VHE, else ``TTBR1_EL1``/``TCR_EL1``), ``64 - T1SZ``
  VA bits, a walk from the level those bits give; block entries at levels 1 and 2.

An entry that is not valid raises :class:`~harness.errors.MemoryReadError`, as an
unmapped address does live.

>>> from harness.mem import DictMem
>>> m = DictMem(size=1 << 24)
>>> for table, index, entry in [(0x1000, 511, 0x2003), (0x2000, 510, 0x3003),
...                             (0x3000, 0, 0x400083)]:          # a 2 MiB page
...     m.write_u64(table + 8 * index, entry)
>>> hex(x86_translate(m, {"cr3": 0x1000, "cr4": 0}, 0xffffffff80001234))
'0x401234'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from harness.errors import InfraError, MemoryReadError
from harness.mem import PhysMem, read_u64
from harness.registry import Registry

__all__ = ["VaWalker", "VA_WALKERS", "x86_translate", "arm64_translate"]

X86_ADDR = 0x000F_FFFF_FFFF_F000        # bits 51:12
ARM64_ADDR = 0x0000_FFFF_FFFF_F000      # bits 47:12 (48-bit output addresses)
ARM64_BADDR = 0x0000_FFFF_FFFF_FFFE     # TTBR BADDR (bit 0: CnP)


def _x86_step(mem: PhysMem, table: int, va: int, level: int) -> tuple[int, bool]:
    """The entry of *va* at *level* (1 = PT): (next table or frame, is a leaf)."""
    shift = 12 + 9 * (level - 1)
    entry = read_u64(mem, table + 8 * ((va >> shift) & 0x1FF))
    if not entry & 1:
        raise MemoryReadError(va, 1, f"virtual address not mapped (level {level} entry "
                                     f"{entry:#x})")
    leaf = level == 1 or (level in (2, 3) and bool(entry & 0x80))
    return entry & X86_ADDR, leaf


def x86_translate(mem: PhysMem, regs: Mapping[str, int], va: int) -> int:
    """The physical address of *va* through CR3 (4 or 5 levels by CR4.LA57)."""
    levels = 5 if regs["cr4"] >> 12 & 1 else 4
    table = regs["cr3"] & X86_ADDR
    for level in range(levels, 0, -1):
        table, leaf = _x86_step(mem, table, va, level)
        if leaf:
            span = 1 << (12 + 9 * (level - 1))
            return (table & ~(span - 1)) | (va & (span - 1))
    raise AssertionError("unreachable")


def _arm64_regs(regs: Mapping[str, int]) -> tuple[int, int]:
    """TTBR1 and TCR of the exception level the halted kernel runs at."""
    el = (regs["cpsr"] >> 2) & 3
    if el == 2 and "TTBR1_EL2" in regs and "TCR_EL2" in regs:
        return regs["TTBR1_EL2"], regs["TCR_EL2"]
    return regs["TTBR1_EL1"], regs["TCR_EL1"]


def arm64_translate(mem: PhysMem, regs: Mapping[str, int], va: int) -> int:
    """The physical address of kernel (upper half) *va* through TTBR1, 4 KiB granule."""
    ttbr, tcr = _arm64_regs(regs)
    bits = 64 - ((tcr >> 16) & 0x3F)
    if (tcr >> 30) & 3 != 2:
        raise InfraError(f"TCR {tcr:#x}: TTBR1's granule is not 4 KiB")
    if va >> bits != (1 << (64 - bits)) - 1:
        raise MemoryReadError(va, 1, f"not a kernel address of a {bits}-bit VA space")
    level = 4 - (bits - 12 + 8) // 9
    table = ttbr & ARM64_BADDR
    while True:
        shift = 12 + 9 * (3 - level)
        width = min(9, bits - shift)
        entry = read_u64(mem, table + 8 * ((va >> shift) & ((1 << width) - 1)))
        if not entry & 1 or (level == 3 and not entry & 2):
            raise MemoryReadError(va, 1, f"virtual address not mapped (level {level} entry "
                                         f"{entry:#x})")
        if level == 3 or not entry & 2:
            span = 1 << shift
            return (entry & ARM64_ADDR & ~(span - 1)) | (va & (span - 1))
        table, level = entry & ARM64_ADDR, level + 1


@dataclass(frozen=True)
class VaWalker:
    """How kernel addresses of one architecture are translated from a saved state."""

    arch: str                      # ARCHES name
    registers: tuple[str, ...]     # what a core keeps (those the CPU lacks are skipped)
    translate: Callable[[PhysMem, Mapping[str, int], int], int]


VA_WALKERS: Registry[VaWalker] = Registry("kernel address walker")
VA_WALKERS.add("x86_64", VaWalker("x86_64", ("cr0", "cr3", "cr4", "cs", "efer", "rip"),
                                  x86_translate))
VA_WALKERS.add("aarch64", VaWalker(
    "aarch64", ("cpsr", "pc", "VTTBR_EL2", "VTCR_EL2", "HCR_EL2", "TTBR0_EL1", "TTBR1_EL1",
                "TCR_EL1", "TTBR0_EL2", "TTBR1_EL2", "TCR_EL2"), arm64_translate))
