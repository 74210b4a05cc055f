"""Reference model for FreeBSD bhyve (vmm.ko): ``bhyve``.

The guest's second-level table is the pmap of the guest vmspace (REFERENCE.md 2), filled
lazily by ``vm_fault()`` (or all at once when ``bhyve -S`` wires memory).  The VM is the
list of ``mem_map`` entries as :class:`MemRange`:

* system memory (kind ``ram``, the ``VM_SYSMEM`` segment; see :func:`vm_setup_memory`):
  RWX;
* device memory (kind ``rom`` or ``device``: the boot ROM, a framebuffer) with its own
  protection: a range without "w" is never writable.  The boot ROM is mapped top-down
  below 4 GiB, but it can move, so its range always comes from the VM description
  (:func:`bootrom_range` builds the usual one);
* anything else (``mmio`` ranges, holes) is emulated and never mapped.

Leaf rules: the frame is the segment object's page (the :class:`Backing`); R is set
(``PG_V``); W only where the range grants it, and set on pages the guest wrote; X on
every page of a range with "x" (``PG_U`` is EPT's X bit and every GPA is below
VM_MAXUSER_ADDRESS); EPT memory type WB with IPAT (``pmap_cache_bits``: low bits 0x70);
4 KiB leaves, 2 MiB ones only with ``hw.vmm.ept.use_superpages`` (option ``superpages``).

Per leaf: ``vm_fault()`` enters a superpage with the fault's protection for all its
pages (``pmap_enter(..., psind)``), and ``pmap_promote_pde()`` (sys/amd64/amd64/pmap.c)
promotes 512 PTEs only when "the 4KB page mappings must map aligned, contiguous physical
memory and ... must have identical characteristics" (after clearing PG_RW on clean
PTEs).  So a 2 MiB leaf carries one permission for all its pages: the range's protection
caps it, and a leaf with a page the guest wrote is writable
(:func:`~harness.models.base.leaf_accesses`); one permission finding per leaf.

A/D bits: with ``PMAP_EMULATE_AD_BITS`` (option ``emulate_ad``; the walker's
``freebsd-emulated-ad`` flavour) valid is EPT_PG_EMUL_V (bit 52), write permission is
EPT_PG_EMUL_RW (bit 53), and the hardware R / W bits are the accessed / modified bits: a
leaf that is valid but not yet accessed has hardware R clear, and a hardware W without
EMUL_RW is a write the pmap never granted.  With hardware A/D, R / W are the permissions
and bits 8 / 9 the CPU's A / D.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.findings import Finding
from harness.formats.base import Mapping
from harness.models.base import (
    PAGE_SIZE,
    Expectation,
    ExpectedPage,
    MemRange,
    Model,
    VMDesc,
    frame_findings,
    leaf_accesses,
    leftover_finding,
    options_of,
    outside_finding,
    page_accesses,
    permission_findings,
    segments,
)

__all__ = ["BhyveOptions", "VM_LOWMEM_LIMIT", "VM_HIGHMEM_BASE", "BOOTROM_SIZE",
           "EPT_CACHE_BITS", "vm_setup_memory", "bootrom_range", "expect", "BHYVE"]

GB = 1 << 30
VM_LOWMEM_LIMIT = 3 * GB          # libvmmapi default lowmem_limit
VM_HIGHMEM_BASE = 4 * GB
BOOTROM_SIZE = 16 << 20           # usr.sbin/bhyve/bootrom.c
EPT_CACHE_BITS = 0x70             # EPT_PG_IGNORE_PAT | EPT_PG_MEMORY_TYPE(PAT_WRITE_BACK)
EPT_PG_WRITE = 0x2
EPT_PG_EMUL_RW = 1 << 53
MAPPED_KINDS = ("ram", "rom", "device")
SUPERPAGE = 2 << 20


@dataclass(frozen=True)
class BhyveOptions:
    """``VMDesc.options`` understood by ``bhyve``."""

    format: str | None = None     # "ept" or "npt"; None: the EPT cache bits are not judged
    emulate_ad: bool = False      # PMAP_EMULATE_AD_BITS (hw.vmm.ept.pmap_flags bit 9)
    superpages: bool = False      # PMAP_PDE_SUPERPAGE: 2 MiB leaves allowed


def vm_setup_memory(memsize: int, lowmem_limit: int = VM_LOWMEM_LIMIT) -> list[MemRange]:
    """libvmmapi's system memory maps: [0, lowmem) and, above the limit, [4 GiB, +highmem).

    >>> [(hex(r.gpa), hex(r.size)) for r in vm_setup_memory(4 * GB)]
    [('0x0', '0xc0000000'), ('0x100000000', '0x40000000')]
    """
    lowmem = min(memsize, lowmem_limit)
    out = [MemRange(0, lowmem, kind="ram", prot="rwx", name="sysmem lowmem")]
    if memsize > lowmem_limit:
        out.append(MemRange(VM_HIGHMEM_BASE, memsize - lowmem, kind="ram", prot="rwx",
                            name="sysmem highmem"))
    return out


def bootrom_range(size: int = BOOTROM_SIZE, end: int = 4 * GB, prot: str = "rx") -> MemRange:
    """The boot ROM devmem map, allocated top-down ending at *end*."""
    return MemRange(end - size, size, kind="rom", prot=prot, name="bootrom")


def _want(rng: MemRange, acc: str) -> dict[str, bool]:
    want = {"r": True}
    if "w" not in rng.prot:
        want["w"] = False
    elif "w" in acc:
        want["w"] = True
    if "x" in rng.prot:
        want["x"] = True
    return want


def _leaf_findings(vm: VMDesc, rng: MemRange, m: Mapping, o: BhyveOptions) -> list[Finding]:
    """Size, memory-type and A/D findings for a leaf inside a mapped range."""
    out = []
    if m.size != PAGE_SIZE and not (o.superpages and m.size == SUPERPAGE):
        out.append(Finding("bad_entry", vm.name, m.gpa, expected=PAGE_SIZE, observed=m.size,
                           detail=f"leaf {m.raw:#x}: superpages {'on' if o.superpages else 'off'}"))
    if o.format == "ept" and m.raw & 0x78 != EPT_CACHE_BITS:
        out.append(Finding("memtype", vm.name, m.gpa, expected=EPT_CACHE_BITS,
                           observed=m.raw & 0x78, detail=f"leaf {m.raw:#x}: WB + IPAT expected"))
    if o.emulate_ad and m.raw & EPT_PG_WRITE and not m.raw & EPT_PG_EMUL_RW:
        out.append(Finding("permission", vm.name, m.gpa, expected="r-?", observed="rw?",
                           detail=f"leaf {m.raw:#x}: hardware W without EPT_PG_EMUL_RW"))
    return out


def _segment_findings(vm: VMDesc, rng: MemRange, start: int, end: int, m: Mapping,
                      acc: str) -> list[Finding]:
    """Frame findings per page, and the leaf's permission, in [start, end) of *rng*."""
    detail = f"leaf {m.raw:#x}"
    out = [f for page in range(start, end, PAGE_SIZE)
           for f in frame_findings(vm.name, page, vm.backing.resolve(rng, page),
                                   m.hpa + (page - m.gpa), detail)]
    return out + permission_findings(vm.name, start, m, _want(rng, acc), detail, end)


def _check_leaf(vm: VMDesc, acc: dict[int, str], o: BhyveOptions, m: Mapping) -> list[Finding]:
    if vm.torn_down:
        return [leftover_finding(vm, m)]
    out: list[Finding] = []
    leaf_acc = leaf_accesses(acc, m.gpa, m.end)
    for start, end, rng in segments(vm, m.gpa, m.end):
        if rng is None or rng.gpa in vm.removed or rng.kind not in MAPPED_KINDS:
            out.append(outside_finding(vm, start, end, rng, m))
            continue
        if start == m.gpa:
            out.extend(_leaf_findings(vm, rng, m, o))
        out.extend(_segment_findings(vm, rng, start, end, m, leaf_acc))
    return out


def _required(vm: VMDesc, acc: dict[int, str]) -> list[ExpectedPage]:
    out = []
    for page, a in sorted(acc.items()):
        rng = vm.range_of(page)
        if vm.torn_down or rng is None or rng.kind not in MAPPED_KINDS:
            continue
        if a == "w" and "w" not in rng.prot:
            continue            # the fault fails; nothing is mapped
        w = True if "w" in a and "w" in rng.prot else None
        out.append(ExpectedPage(page, vm.backing.resolve(rng, page), r=True, w=w,
                                x=True if "x" in a else None))
    return out


def expect(vm: VMDesc) -> Expectation:
    """The ``bhyve`` expectation for *vm* (EPT or RVI)."""
    o = options_of(vm, BhyveOptions)
    acc = page_accesses(vm.touched)
    return Expectation(vm.name, _required(vm, acc), lambda m: _check_leaf(vm, acc, o, m))


BHYVE = Model("bhyve", "FreeBSD bhyve, guest vmspace pmap over sysmem and devmem maps",
              ("ept", "npt"), expect)
