"""Reference models for Linux KVM's two-dimensional paging: ``kvm-x86`` and ``kvm-arm64``.

The VM is what the workload reports: one :class:`MemRange` per memslot (``hva`` =
``userspace_addr``, flags ``readonly`` = KVM_MEM_READONLY, ``dirty_log`` =
KVM_MEM_LOG_DIRTY_PAGES), a backing that gives the L1 physical page of each slot page
(the workload's ``/proc/self/pagemap``) and the pages the guest touched.

Rules shared by both architectures:

* a present leaf outside every memslot is ``unexpected`` (a leaf in a removed slot is
  ``leftover``); after the VM is destroyed every leaf is ``leftover``;
* every 4 KiB page a leaf covers whose backing is known maps that page (``wrong_frame``).
  Huge leaves therefore pass only where the backing is physically contiguous (the frame's
  alignment is the walker's business);
* R must be set; a readonly slot is never writable; a page the guest wrote in a normal
  slot is writable; see the options for dirty logging and X;
* every touched page must be present with its backing frame (``missing``), except a
  write-only touch of a readonly slot, which KVM emulates as MMIO and never maps.

x86 (``kvm-x86``; ``ept`` and ``npt``): every leaf is executable, unless the NX huge page
mitigation is on, in which case huge leaves are not; on EPT the memory type is WB (6),
IPAT masked (KVM sets it or not depending on version, quirks and non-coherent DMA).
An EPT leaf with R, W and X all clear is an access-tracked SPTE (EPT without A/D bits,
``mark_spte_for_access_track``): its frame is checked, its permissions are not.

arm64 (``kvm-arm64``; ``stage2``): a page the guest executed is executable, any other
leaf is XN unless the CPU has DIC (``user_mem_abort`` then grants X on every fault);
MemAttr is Normal WB (0xF, or 6 under FEAT_S2FWB; option ``fwb``, unset = either: QEMU's
``-cpu max`` has FWB, leaves read ``...7db``); option ``identity`` for a
kernel-internal VM that maps IPA to the same PA.
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
    leftover_finding,
    options_of,
    outside_finding,
    page_accesses,
    permission_findings,
    segments,
)

__all__ = ["KvmX86Options", "KvmArm64Options", "VMX_EPT_MT_WB", "MT_S2_NORMAL",
           "MT_S2_FWB_NORMAL", "expect_x86", "expect_arm64", "KVM_X86", "KVM_ARM64"]

VMX_EPT_MT_WB = 6          # EPT leaf memory type WB (bits 5:3)
MT_S2_NORMAL = 0xF         # stage-2 MemAttr Normal, Inner/Outer WB
MT_S2_FWB_NORMAL = 6       # stage-2 MemAttr Normal WB under FEAT_S2FWB


@dataclass(frozen=True)
class KvmX86Options:
    """``VMDesc.options`` understood by ``kvm-x86``."""

    format: str | None = None       # "ept" or "npt"; None: check memtype where the walker gives one
    nx_huge_pages: bool = False     # kvm.nx_huge_pages=on: huge leaves are NX, 4 KiB leaves X
    dirty_log_strict: bool = False  # dirty-logged slots: only written pages may be writable
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
    x_rule: Callable[[Mapping, str], bool | None]   # (leaf, accesses) -> X wanted, None = either
    memtype: int | tuple[int, ...] | None           # wanted memtype(s), None = not checked
    memtype_mask: int = 0xF                         # bits of Mapping.memtype compared
    identity: bool = False


def _want(rng: MemRange, acc: str, m: Mapping, rules: _Rules) -> dict[str, bool]:
    """The permission bits one page of a leaf must have (absent key = either)."""
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


def _page_findings(vm: VMDesc, rng: MemRange, page: int, m: Mapping, acc: str,
                   rules: _Rules) -> list[Finding]:
    """Frame and permission findings for one 4 KiB page of a leaf inside a slot."""
    detail = f"leaf {m.raw:#x}"
    want_hpa = page if rules.identity else vm.backing.resolve(rng, page)
    out = frame_findings(vm.name, page, want_hpa, m.hpa + (page - m.gpa), detail)
    if not (m.r or m.w or m.x):
        return out      # access-tracked SPTE (no EPT A/D): R/W/X saved in bits 54-55
    return out + permission_findings(vm.name, page, m, _want(rng, acc, m, rules), detail)


def _memtype_finding(vm: VMDesc, m: Mapping, rules: _Rules) -> list[Finding]:
    if rules.memtype is None or m.memtype is None:
        return []
    wanted = rules.memtype if isinstance(rules.memtype, tuple) else (rules.memtype,)
    if (m.memtype & rules.memtype_mask) in wanted:
        return []
    return [Finding("memtype", vm.name, m.gpa, expected=rules.memtype, observed=m.memtype,
                    detail=f"leaf {m.raw:#x}")]


def _check_leaf(vm: VMDesc, accs: dict[int, str], rules: _Rules, m: Mapping) -> list[Finding]:
    """Every finding for one observed leaf."""
    if vm.torn_down:
        return [leftover_finding(vm, m)]
    out: list[Finding] = []
    inside = False
    for start, end, rng in segments(vm, m.gpa, m.end):
        if rng is None or rng.gpa in vm.removed:
            out.append(outside_finding(vm, start, end, rng, m))
            continue
        inside = True
        for page in range(start, end, PAGE_SIZE):
            out.extend(_page_findings(vm, rng, page, m, accs.get(page, ""), rules))
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


def expect_x86(vm: VMDesc) -> Expectation:
    """The ``kvm-x86`` expectation for *vm* (EPT or NPT, TDP MMU)."""
    o = options_of(vm, KvmX86Options)
    memtype = VMX_EPT_MT_WB if o.format in (None, "ept") else None
    return _expect(vm, _Rules(o.dirty_log_strict, _x86_x(o.nx_huge_pages), memtype, 0x7))


def expect_arm64(vm: VMDesc) -> Expectation:
    """The ``kvm-arm64`` expectation for *vm* (stage-2 of a KVM VM)."""
    o = options_of(vm, KvmArm64Options)
    memtype: int | tuple[int, ...] = ((MT_S2_NORMAL, MT_S2_FWB_NORMAL) if o.fwb is None
                                      else MT_S2_FWB_NORMAL if o.fwb else MT_S2_NORMAL)
    return _expect(vm, _Rules(o.dirty_log_strict, _arm64_x(o.dic), memtype, 0xF, o.identity))


KVM_X86 = Model("kvm-x86", "Linux KVM, x86 TDP MMU over memslots (EPT or NPT)",
                ("ept", "npt"), expect_x86)
KVM_ARM64 = Model("kvm-arm64", "Linux KVM, arm64 stage-2 over memslots",
                  ("stage2",), expect_arm64)
