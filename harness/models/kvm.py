"""Reference models for Linux KVM's two-dimensional paging: ``kvm-x86`` and ``kvm-arm64``.

The VM is what the workload reports: one :class:`MemRange` per memslot (``hva`` =
``userspace_addr``, flags ``readonly`` = KVM_MEM_READONLY, ``dirty_log`` =
KVM_MEM_LOG_DIRTY_PAGES), a backing that gives the L1 physical page of each slot page
(the workload's ``/proc/self/pagemap``) and the pages the guest touched.

Rules are evaluated **per leaf** (4 KiB page, 2 MiB or 1 GiB block) where KVM decides them
per leaf: a fault installs or relaxes one leaf, so the permission it grants covers every
page of that leaf.  A leaf's accesses are the union of the accesses to its pages
(:func:`~harness.models.base.leaf_accesses`).  Sources: Linux 6.1 (Debian 6.1.192).

Rules shared by both architectures:

* a present leaf outside every memslot is ``unexpected`` (a leaf in a removed slot is
  ``leftover``); after the VM is destroyed every leaf is ``leftover``;
* every 4 KiB page a leaf covers whose backing is known maps that page (``wrong_frame``).
  Huge leaves therefore pass only where the backing is physically contiguous (the frame's
  alignment is the walker's business);
* R must be set; a readonly slot is never writable; a leaf with a page the guest wrote in
  a normal slot is writable; see the options for dirty logging and X;
* a dirty-logged slot is mapped with 4 KiB leaves only (``bad_entry`` otherwise): x86
  ``kvm_mmu_hugepage_adjust()`` returns early when ``kvm_slot_dirty_track_enabled(slot)``
  (arch/x86/kvm/mmu/mmu.c); arm64 ``user_mem_abort()`` sets ``force_pte`` when
  ``memslot_is_logging()`` (arch/arm64/kvm/mmu.c);
* every touched page must be present with its backing frame (``missing``), except a
  write-only touch of a readonly slot, which KVM emulates as MMIO and never maps.

x86 (``kvm-x86``; ``ept`` and ``npt``).  ``make_spte()`` (arch/x86/kvm/mmu/spte.c)
grants W on any fault when the host page is writable (``host_writable``) and marks the
page dirty, so W is never forbidden by the access alone; every leaf is executable,
unless the NX huge page mitigation is on (``make_spte``: ``level > PG_LEVEL_4K &&
is_nx_huge_page_enabled()`` clears ACC_EXEC_MASK), in which case huge leaves are not.
Memory type (``make_spte``: ``if (shadow_memtype_mask) spte |= get_mt_mask()``):

* EPT: ``kvm_mmu_set_ept_masks()`` sets ``shadow_memtype_mask = VMX_EPT_MT_MASK |
  VMX_EPT_IPAT_BIT``; ``vmx_get_mt_mask()`` (arch/x86/kvm/vmx/vmx.c) gives RAM of a VM
  without non-coherent DMA ``MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT |
  VMX_EPT_IPAT_BIT``: memory type WB (6), IPAT set (option ``ipat``; None accepts either,
  since later kernels drop IPAT when the guest-PAT quirk is off).  An EPT leaf with R, W
  and X all clear is an access-tracked SPTE (EPT without A/D bits,
  ``mark_spte_for_access_track``): its frame is checked, its permissions are not;
* NPT: ``kvm_mmu_reset_all_pte_masks()`` sets ``shadow_memtype_mask = 0`` and SVM has no
  ``get_mt_mask``: KVM never writes PWT, PCD or PAT, so an NPT leaf's PAT index is 0.

arm64 (``kvm-arm64``; ``stage2``).  ``user_mem_abort()``: ``if (exec_fault) prot |=
KVM_PGTABLE_PROT_X``, then either ``kvm_pgtable_stage2_relax_perms()`` on the leaf that
faulted (a permission fault at its granule) or ``kvm_pgtable_stage2_map()`` of the whole
``vma_pagesize`` block (``transparent_hugepage_adjust()`` maps a THP-backed page as a
2 MiB block, ``fault_supports_stage2_huge_mapping()`` only where the block lies inside
the memslot and the slot's IPA and HVA agree modulo 2 MiB).  So a leaf with a page the
guest executed is executable, any other leaf is XN unless the CPU has DIC
(``ARM64_HAS_CACHE_DIC``: X on every fault, option ``dic``).  A read fault in a
dirty-logged slot maps read-only (``logging_active && !write_fault``: ``writable =
false``), so strict dirty logging is the default.  MemAttr is Normal WB (0xF, or 6 under
FEAT_S2FWB; option ``fwb``, unset = either: QEMU's ``-cpu max`` has FWB, leaves read
``...7db``); option ``identity`` for a kernel-internal VM that maps IPA to the same PA.

Memory types are checked only when the format is known: ``format`` ``"ept"`` or
``"npt"`` for ``kvm-x86`` (the ``linux-kvm-svm`` hypervisor record passes ``"npt"``);
with ``format`` unset they are not judged.
"""

from __future__ import annotations

from collections.abc import Callable
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
    leaf_size_finding,
    leftover_finding,
    options_of,
    outside_finding,
    page_accesses,
    permission_findings,
    segments,
)

__all__ = ["KvmX86Options", "KvmArm64Options", "VMX_EPT_MT_WB", "VMX_EPT_IPAT_BIT",
           "NPT_PAT_INDEX_WB", "MT_S2_NORMAL", "MT_S2_FWB_NORMAL", "expect_x86",
           "expect_arm64", "KVM_X86", "KVM_ARM64"]

VMX_EPT_MT_WB = 6          # EPT leaf memory type WB (bits 5:3)
VMX_EPT_IPAT_BIT = 1 << 6  # EPT leaf "ignore PAT"
NPT_PAT_INDEX_WB = 0       # NPT leaf PAT index (PAT, PCD, PWT all clear)
MT_S2_NORMAL = 0xF         # stage-2 MemAttr Normal, Inner/Outer WB
MT_S2_FWB_NORMAL = 6       # stage-2 MemAttr Normal WB under FEAT_S2FWB


@dataclass(frozen=True)
class KvmX86Options:
    """``VMDesc.options`` understood by ``kvm-x86``."""

    format: str | None = None       # "ept" or "npt"; None: memory types not judged
    nx_huge_pages: bool = False     # kvm.nx_huge_pages=on: huge leaves are NX, 4 KiB leaves X
    dirty_log_strict: bool = False  # dirty-logged slots: only written pages may be writable
    ipat: bool | None = None        # EPT: IPAT must be set (True), clear (False), either (None)
    # x86 KVM's make_spte() maps a read fault writable when the host page is writable and marks
    # the page dirty (mark_page_dirty_in_slot), so by default a *touched* page may be writable
    # (seen on a live 6.1 L1 with NPT: a read in a dirty-logged slot gave a W+D leaf).


@dataclass(frozen=True)
class KvmArm64Options:
    """``VMDesc.options`` understood by ``kvm-arm64``."""

    fwb: bool | None = None         # FEAT_S2FWB: MemAttr 6, else 0xF; None: accept either
    dic: bool = False               # CTR_EL0.DIC: X granted on every fault
    identity: bool = False          # kernel-internal VM: IPA == PA, no backing needed
    dirty_log_strict: bool = True   # user_mem_abort(): read faults map read-only when logging


@dataclass(frozen=True)
class _Rules:
    """What differs between the architectures, resolved from the options."""

    strict_log: bool
    x_rule: Callable[[Mapping, str], bool | None]   # (leaf, leaf accesses) -> X, None = either
    memtype: tuple[int, ...] | None                 # allowed Mapping.memtype, None = not judged
    raw_rule: Callable[[Mapping], str | None] = lambda m: None   # other memory-type bits
    identity: bool = False


def _want(rng: MemRange, acc: str, m: Mapping, rules: _Rules) -> dict[str, bool]:
    """The permission bits leaf *m* must have in *rng*, given its accesses (absent = either)."""
    want = {"r": True}
    if "readonly" in rng.flags:
        want["w"] = False
    elif "w" in acc:
        want["w"] = True
    elif "dirty_log" in rng.flags and (rules.strict_log or not acc):
        want["w"] = False
    x = rules.x_rule(m, acc)
    if x is not None:
        want["x"] = x
    return want


def _segment_findings(vm: VMDesc, rng: MemRange, start: int, end: int, m: Mapping, acc: str,
                      rules: _Rules) -> list[Finding]:
    """Frame findings per page, and the leaf's size and permissions, in [start, end) of *rng*."""
    detail = f"leaf {m.raw:#x}"
    out: list[Finding] = []
    for page in range(start, end, PAGE_SIZE):
        want_hpa = page if rules.identity else vm.backing.resolve(rng, page)
        out += frame_findings(vm.name, page, want_hpa, m.hpa + (page - m.gpa), detail)
    if "dirty_log" in rng.flags:
        out += leaf_size_finding(vm.name, m, PAGE_SIZE, "a dirty-logged slot maps 4 KiB only")
    if not (m.r or m.w or m.x):
        return out      # access-tracked SPTE (no EPT A/D): R/W/X saved in bits 54-55
    return out + permission_findings(vm.name, start, m, _want(rng, acc, m, rules), detail, end)


def _memtype_finding(vm: VMDesc, m: Mapping, rules: _Rules) -> list[Finding]:
    """``memtype`` when the leaf's memory type (or its other memory-type bits) is not KVM's.

    A leaf without a memory type (a walker of a format that has none) is not judged.
    """
    if rules.memtype is None or m.memtype is None:
        return []
    bad = None
    if m.memtype not in rules.memtype:
        bad = f"memory type {m.memtype} not in {rules.memtype}"
    else:
        bad = rules.raw_rule(m)
    if bad is None:
        return []
    expected = rules.memtype[0] if len(rules.memtype) == 1 else rules.memtype
    return [Finding("memtype", vm.name, m.gpa, expected=expected, observed=m.memtype,
                    detail=f"leaf {m.raw:#x}: {bad}", end=m.end if m.size > PAGE_SIZE else None)]


def _check_leaf(vm: VMDesc, accs: dict[int, str], rules: _Rules, m: Mapping) -> list[Finding]:
    """Every finding for one observed leaf."""
    if vm.torn_down:
        return [leftover_finding(vm, m)]
    out: list[Finding] = []
    inside = False
    acc = leaf_accesses(accs, m.gpa, m.end)
    for start, end, rng in segments(vm, m.gpa, m.end):
        if rng is None or rng.gpa in vm.removed:
            out.append(outside_finding(vm, start, end, rng, m))
            continue
        inside = True
        out.extend(_segment_findings(vm, rng, start, end, m, acc, rules))
    if inside:
        out.extend(_memtype_finding(vm, m, rules))
    return out


def _required(vm: VMDesc, accs: dict[int, str], rules: _Rules) -> list[ExpectedPage]:
    """Every touched page KVM must have mapped, with its frame."""
    out = []
    for page, acc in sorted(accs.items()):
        rng = vm.range_of(page)
        if rng is None or vm.torn_down:
            continue
        if "readonly" in rng.flags and acc == "w":
            continue        # emulated as MMIO (KVM_EXIT_MMIO), never mapped
        hpa = page if rules.identity else vm.backing.resolve(rng, page)
        w = True if "w" in acc and "readonly" not in rng.flags else None
        out.append(ExpectedPage(page, hpa, r=True, w=w, x=True if "x" in acc else None))
    return out


def _expect(vm: VMDesc, rules: _Rules) -> Expectation:
    accs = page_accesses(vm.touched)
    return Expectation(vm.name, _required(vm, accs, rules),
                       lambda m: _check_leaf(vm, accs, rules, m))


def _x86_x(nx_huge: bool) -> Callable[[Mapping, str], bool | None]:
    def rule(m: Mapping, acc: str) -> bool | None:
        return not (nx_huge and m.size > PAGE_SIZE)
    return rule


def _arm64_x(dic: bool) -> Callable[[Mapping, str], bool | None]:
    def rule(m: Mapping, acc: str) -> bool | None:
        if "x" in acc:
            return True
        return None if dic else False
    return rule


def _ept_ipat(ipat: bool | None) -> Callable[[Mapping], str | None]:
    def rule(m: Mapping) -> str | None:
        if ipat is None or bool(m.raw & VMX_EPT_IPAT_BIT) == ipat:
            return None
        return f"IPAT {'clear' if ipat else 'set'}, KVM sets it {'' if ipat else 'not '}here"
    return rule


def expect_x86(vm: VMDesc) -> Expectation:
    """The ``kvm-x86`` expectation for *vm* (EPT or NPT, TDP MMU)."""
    o = options_of(vm, KvmX86Options)
    memtype: tuple[int, ...] | None = {None: None, "ept": (VMX_EPT_MT_WB,),
                                       "npt": (NPT_PAT_INDEX_WB,)}[o.format]
    return _expect(vm, _Rules(o.dirty_log_strict, _x86_x(o.nx_huge_pages), memtype,
                              _ept_ipat(o.ipat) if o.format == "ept" else lambda m: None))


def expect_arm64(vm: VMDesc) -> Expectation:
    """The ``kvm-arm64`` expectation for *vm* (stage-2 of a KVM VM)."""
    o = options_of(vm, KvmArm64Options)
    memtype: tuple[int, ...] = ((MT_S2_NORMAL, MT_S2_FWB_NORMAL) if o.fwb is None
                                else (MT_S2_FWB_NORMAL,) if o.fwb else (MT_S2_NORMAL,))
    return _expect(vm, _Rules(o.dirty_log_strict, _arm64_x(o.dic), memtype,
                              identity=o.identity))


KVM_X86 = Model("kvm-x86", "Linux KVM, x86 TDP MMU over memslots (EPT or NPT)",
                ("ept", "npt"), expect_x86)
KVM_ARM64 = Model("kvm-arm64", "Linux KVM, arm64 stage-2 over memslots",
                  ("stage2",), expect_arm64)
