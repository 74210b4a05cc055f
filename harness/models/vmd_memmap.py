"""vmd(8)'s guest memory map, as ``create_memory_map()`` in usr.sbin/vmd/x86_vm.c builds it.

vmctl's ``-m`` size arrives in ``vcp_memranges[0].vmr_size``; vmd then splits it into
``vm_mem_range`` entries (REFERENCE.md 1.8, x86_vm.c rev 1.3):

====  ==============================  =========================================
idx   GPA range                       type
====  ==============================  =========================================
0     [0, LOWMEM_KB KiB)              VM_MEM_RAM
1     [LOWMEM_KB KiB, 1 MiB)          VM_MEM_RESERVED (VGA writes at 0xB8000)
2     [1 MiB, 1 MiB + above_1m)       VM_MEM_RAM
3     [MMIO_BAR_BASE, MMIO_BAR_END]   VM_MEM_MMIO (never mapped)
4     [MMIO_BAR_END + 1, +2 MiB)      VM_MEM_RESERVED (second BIOS copy)
5     [4 GiB, 4 GiB + above_4g)       VM_MEM_RAM, only if anything is left
====  ==============================  =========================================

If 2 MiB or less is left above 1 MiB, only three ranges exist and the third is the
2 MiB BIOS copy at gpa ``VMM_PCI_MMIO_BAR_END`` itself (not page aligned: the kernel's
``vm_create_check_mem_ranges`` then refuses the VM).  The arithmetic is vmd's ``size_t``
arithmetic, wrap-around included (a size below 1 MiB wraps).

>>> [(hex(r.gpa), hex(r.size), r.kind) for r in create_memory_map(256 << 20)][2]
('0x100000', '0xff00000', 'ram')
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.models.base import MemRange

__all__ = ["LOWMEM_KB", "VMM_PCI_MMIO_BAR_BASE", "VMM_PCI_MMIO_BAR_END", "VMM_MAX_VM_MEM_SIZE",
           "VM_MEM_KINDS", "create_memory_map", "cross_check"]

LOWMEM_KB = 640                         # usr.sbin/vmd/loadfile.h
VMM_PCI_MMIO_BAR_BASE = 0xF0000000      # machine/vmmvar.h
VMM_PCI_MMIO_BAR_END = 0xFFDFFFFF       # "2 MiB below 4 GiB" (older trees: 0xF0FFFFFF)
VMM_MAX_VM_MEM_SIZE = 128 << 30         # sys/dev/vmm/vmm.h rev 1.11
VM_MEM_KINDS = {0: "ram", 1: "reserved", 2: "mmio"}   # VM_MEM_RAM, _RESERVED, _MMIO

MB = 1 << 20
GB = 1 << 30
_SIZE_T = (1 << 64) - 1


def _rng(i: int, gpa: int, size: int, kind: str) -> MemRange:
    return MemRange(gpa, size, kind=kind, name=f"vm_memranges[{i}]")


def create_memory_map(mem_size: int, *, lowmem_kb: int = LOWMEM_KB,
                      mmio_base: int = VMM_PCI_MMIO_BAR_BASE,
                      mmio_end: int = VMM_PCI_MMIO_BAR_END,
                      max_mem: int = VMM_MAX_VM_MEM_SIZE) -> list[MemRange]:
    """The ranges vmd asks vmm(4) for, for a VM of *mem_size* bytes ([] if vmd gives none)."""
    if mem_size == 0 or mem_size > max_mem:
        return []
    out = [_rng(0, 0, lowmem_kb * 1024, "ram"),
           _rng(1, lowmem_kb * 1024, MB - lowmem_kb * 1024, "reserved")]
    left = (mem_size - MB) & _SIZE_T          # both lengths subtracted, as size_t
    if left <= 2 * MB:
        return [*out, _rng(2, mmio_end, 2 * MB, "reserved")]
    above_1m = min(left, mmio_base - MB)
    above_4g = left - above_1m
    out += [_rng(2, MB, above_1m, "ram"),
            _rng(3, mmio_base, mmio_end - mmio_base + 1, "mmio"),
            _rng(4, mmio_end + 1, 2 * MB, "reserved")]
    if above_4g > 0:
        out.append(_rng(5, 4 * GB, above_4g, "ram"))
    return out


def cross_check(predicted: Sequence[MemRange], vm_memranges: Sequence[MemRange]) -> list[str]:
    """Differences between the predicted map and the kernel's live ``vm->vm_memranges``.

    Compares the count and, index by index, gpa, size and type; an empty list means equal.
    """
    out = []
    if len(predicted) != len(vm_memranges):
        out.append(f"vm_nmemranges is {len(vm_memranges)}, predicted {len(predicted)}")
    for i, (p, k) in enumerate(zip(predicted, vm_memranges, strict=False)):
        for what in ("gpa", "size", "kind"):
            want, got = getattr(p, what), getattr(k, what)
            if want != got:
                show = (lambda v: f"{v:#x}") if what != "kind" else str
                out.append(f"vm_memranges[{i}].{what} is {show(got)}, predicted {show(want)}")
    return out
