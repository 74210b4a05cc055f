"""Reference models for OpenBSD vmm(4): ``openbsd-vmm`` (vm_pmap + one uao per range) and
``openbsd-vmm-old`` (vmspace + uvm_share).

New design (REFERENCE.md 1.5, 1.7; ``vmx_fault_page`` / ``svm_fault_page``):

* a GPA in a RAM or RESERVED range is REGULAR and is entered with
  ``pmap_enter(vm_pmap, pa, hpa, PROT_READ|PROT_WRITE|PROT_EXEC, 0)``; the frame is the
  page behind vmd's ``vmr_va + (gpa - vmr_gpa)`` (the :class:`~harness.models.base.Backing`);
* ``pmap_enter_ept`` writes 4 KiB leaves only, ``hpa | EPT_WB | EPT_R | EPT_W | EPT_X``:
  the low 12 bits are exactly 0x037 (no IPAT, no PS, no A/D since the EPTP does not
  enable them, no software bits).  On RVI the leaf is an x86 PTE with PG_V|PG_RW|PG_u and
  no NX;
* MMIO ranges go to vmd (``VEE_FAULT_MMIO_ASSIST``) and are never mapped;
* ``vm_teardown`` removes every range and ``pmap_remove_ept`` frees a table page once it is
  empty: after teardown no leaf and no table page below the root remains, and after a range
  is removed nothing is mapped in it.

Old design (differences): the nested pmap is the one of a vmspace whose map shares vmd's
entries (``uvm_share``), so the entries come from ``uvm_fault`` on that map
(``vmx_fault_page``: ``uvm_fault(vcpu->vc_parent->vm_map, gpa, fault_type,
PROT_READ | PROT_WRITE | PROT_EXEC)``):

* the EPTP enables A/D when the CPU has them (``IA32_EPT_VPID_CAP_AD_BITS``), so leaves may
  carry hardware-set A (bit 8) and D (bit 9);
* uvm_fault may enter a page without W (copy-on-write anons, read faults) and maps
  neighbouring resident pages (fault-ahead), so W is required only on written pages;
* ``vm_impl_init_svm`` was "removed due to rot": the old design is EPT only.

Per leaf: both designs enter one 4 KiB page per fault (``pmap_enter_ept`` never sets
EPT_PS; OpenBSD's amd64 pmap makes no large user mappings), so a leaf is a page and
its rules are that page's.  A larger leaf is ``bad_entry``; its W requirement (old
design) comes from the accesses to all its pages (:func:`~harness.models.base.leaf_accesses`).

The EPT rules on the low bits apply when ``format`` is ``"ept"``; with ``format`` unset
they are not judged (NPT leaves have a memory type too: their PAT index).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from harness.findings import NOT_PRESENT, Finding
from harness.formats.base import Mapping, WalkResult
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

__all__ = ["OpenbsdOptions", "EPT_LEAF_LOW_BITS", "EPT_AD_BITS", "VM_MEM_TYPES", "mem_range",
           "expect_new", "expect_old", "table_leftovers", "empty_tables", "OPENBSD_VMM",
           "OPENBSD_VMM_OLD"]

EPT_R, EPT_W, EPT_X = 0x1, 0x2, 0x4     # sys/arch/amd64/include/pte.h
EPT_WB = 6 << 3
EPT_LEAF_LOW_BITS = EPT_WB | EPT_R | EPT_W | EPT_X     # 0x037
EPT_AD_BITS = 0x300                     # EPT A (bit 8), D (bit 9)
MAPPED_KINDS = ("ram", "reserved")      # VMM_MEM_TYPE_REGULAR; VM_MEM_MMIO is never mapped
VM_MEM_TYPES = {0: "ram", 1: "reserved", 2: "mmio"}   # VM_MEM_RAM, VM_MEM_RESERVED, VM_MEM_MMIO


@dataclass(frozen=True)
class OpenbsdOptions:
    """``VMDesc.options`` understood by the OpenBSD models."""

    format: str | None = None     # "ept" or "npt"; None: the EPT low-bit rules are not judged
    ad_bits: bool | None = None   # EPTP A/D enabled; None = the design's default


def mem_range(vmr_gpa: int, vmr_va: int, vmr_size: int, vmr_type: int,
              index: int = 0) -> MemRange:
    """A :class:`MemRange` from one live ``struct vm_mem_range`` (hva = vmr_va).

    >>> mem_range(0xF0000000, 0, 0xFE00000, 2, 3).kind
    'mmio'
    """
    return MemRange(vmr_gpa, vmr_size, kind=VM_MEM_TYPES[vmr_type], hva=vmr_va,
                    name=f"vm_memranges[{index}]")


@dataclass(frozen=True)
class _Rules:
    ept: bool | None        # True EPT, False NPT, None unknown (EPT low bits not judged)
    ad_bits: bool           # hardware A/D may be set
    old: bool               # old design: W only required where written


def _want(acc: str, rules: _Rules) -> dict[str, bool]:
    if rules.old:
        return {"r": True, "x": True, **({"w": True} if "w" in acc else {})}
    return {"r": True, "w": True, "x": True}


def _low_bits_findings(vm: VMDesc, m: Mapping, rules: _Rules) -> list[Finding]:
    """EPT: the memory type must be WB without IPAT; no bit beyond R/W/X/WB (+A/D)."""
    low = m.raw & 0xFFF
    out = []
    if low & 0x78 != EPT_WB:
        out.append(Finding("memtype", vm.name, m.gpa, expected=EPT_WB, observed=low & 0x78,
                           detail=f"leaf {m.raw:#x}: memtype/IPAT bits 6:3 must be 0x30"))
    extra = low & ~(0x7F | (EPT_AD_BITS if rules.ad_bits else 0))
    if extra:
        out.append(Finding("bad_entry", vm.name, m.gpa, expected=EPT_LEAF_LOW_BITS,
                           observed=low, detail=f"leaf {m.raw:#x}: bits {extra:#x} set"))
    return out


def _leaf_findings(vm: VMDesc, rng: MemRange, m: Mapping, acc: dict[int, str],
                   rules: _Rules) -> list[Finding]:
    """Size, permission and memtype findings for a leaf inside a mapped range."""
    out = []
    if m.size != PAGE_SIZE:
        out.append(Finding("bad_entry", vm.name, m.gpa, expected=PAGE_SIZE, observed=m.size,
                           detail=f"leaf {m.raw:#x}: vmm maps 4 KiB leaves only"))
    out += permission_findings(vm.name, m.gpa, m, _want(leaf_accesses(acc, m.gpa, m.end),
                                                         rules), f"leaf {m.raw:#x}", m.end)
    if rules.ept:
        out.extend(_low_bits_findings(vm, m, rules))
    return out


def _frame_findings(vm: VMDesc, rng: MemRange, start: int, end: int,
                    m: Mapping) -> list[Finding]:
    return [f for page in range(start, end, PAGE_SIZE)
            for f in frame_findings(vm.name, page, vm.backing.resolve(rng, page),
                                    m.hpa + (page - m.gpa), f"leaf {m.raw:#x}")]


def _check_leaf(vm: VMDesc, acc: dict[int, str], rules: _Rules, m: Mapping) -> list[Finding]:
    if vm.torn_down:
        return [leftover_finding(vm, m)]
    out: list[Finding] = []
    for start, end, rng in segments(vm, m.gpa, m.end):
        if rng is None or rng.gpa in vm.removed or rng.kind not in MAPPED_KINDS:
            out.append(outside_finding(vm, start, end, rng, m))
            continue
        out.extend(_frame_findings(vm, rng, start, end, m))
        if start == m.gpa:
            out.extend(_leaf_findings(vm, rng, m, acc, rules))
    return out


def _required(vm: VMDesc, acc: dict[int, str], rules: _Rules) -> list[ExpectedPage]:
    out = []
    for page, a in sorted(acc.items()):
        rng = vm.range_of(page)
        if vm.torn_down or rng is None or rng.kind not in MAPPED_KINDS:
            continue
        want = _want(a, rules)
        out.append(ExpectedPage(page, vm.backing.resolve(rng, page), r=want.get("r"),
                                w=want.get("w"), x=want.get("x")))
    return out


def _expect(vm: VMDesc, old: bool) -> Expectation:
    o = options_of(vm, OpenbsdOptions)
    ept = {None: None, "ept": True, "npt": False}[o.format]
    rules = _Rules(ept, old if o.ad_bits is None else o.ad_bits, old)
    acc = page_accesses(vm.touched)
    return Expectation(vm.name, _required(vm, acc, rules), lambda m: _check_leaf(vm, acc, rules, m))


def expect_new(vm: VMDesc) -> Expectation:
    """``openbsd-vmm``: the vm_pmap + uao design (OpenBSD 7.6 and later)."""
    return _expect(vm, old=False)


def expect_old(vm: VMDesc) -> Expectation:
    """``openbsd-vmm-old``: the vmspace + uvm_share design."""
    return _expect(vm, old=True)


def table_leftovers(vm: VMDesc, tables: Collection[int], root: int) -> list[Finding]:
    """After teardown: every table page seen below *root* is a ``leftover``.

    *tables* are the physical addresses of the table pages the walk read (root included
    or not); a walk with no leaf but empty tables still leaves findings here.
    """
    return [Finding("leftover", vm.name, None, expected=NOT_PRESENT, observed=pa,
                    detail=f"table page {pa:#x} still linked below root {root:#x}")
            for pa in sorted(set(tables) - {root})]


def empty_tables(vm: VMDesc, walk: WalkResult, levels: int = 4) -> list[Finding]:
    """Table pages that hold no leaf, from the walk's count (4 KiB leaves only).

    ``pmap_do_remove_ept`` frees a table page once it is empty, so the walk of a live or
    torn-down vm_pmap reads exactly one table per distinct GPA prefix of its leaves at
    each level, plus the root.  More reads mean empty tables left behind.
    """
    prefixes = {(lv, m.gpa >> (12 + 9 * lv)) for m in walk.mappings
                for lv in range(1, levels)}
    need = 1 + len(prefixes)
    if walk.tables_read <= need:
        return []
    return [Finding("leftover", vm.name, None, expected=need, observed=walk.tables_read,
                    detail=f"{walk.tables_read - need} table page(s) hold no leaf")]


OPENBSD_VMM = Model("openbsd-vmm", "OpenBSD vmm(4), vm_pmap + one uao per range (7.6 and later)",
                    ("ept", "npt"), expect_new)
OPENBSD_VMM_OLD = Model("openbsd-vmm-old", "OpenBSD vmm(4), vmspace + uvm_share (before 7.6)",
                        ("ept",), expect_old)
