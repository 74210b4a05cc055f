"""Live KVM VMs and their nested roots (nCR3) in an L1 Linux on AMD SVM.

The walk follows KVM's own data, with every offset from BTF (vmlinux plus the
split BTF of ``kvm`` and ``kvm_amd``) and the addresses from kallsyms:

``vm_list`` -> each ``struct kvm`` (``vm_list`` member; newest first, as
``kvm_create_vm`` adds at the head) -> ``userspace_pid``; ``vcpu_array``
(xarray) -> ``struct vcpu_svm`` (whose first member ``vcpu`` is the
``struct kvm_vcpu``) -> ``vmcb01.pa`` / ``vmcb01.ptr`` and
``vcpu->arch.mmu->root.hpa``; ``memslots[0]`` -> ``gfn_tree`` (rb-tree of
``kvm_memory_slot`` through ``gfn_node[node_idx]``).

Then each vCPU's VMCB is read in *physical* memory and cross-checked:
``root.hpa`` equals the VMCB's nCR3 (C-bit aside); the page passes the VMCB
signature; ``vmcb01.ptr`` is ``vmcb01.pa`` in the direct map; and, when QEMU's
``vmrun!`` log is given, ``vmcb01.pa`` appears in it.  A disagreement raises
:class:`~harness.errors.InfraError` showing both values.  Only ``vm_list``
members are reported: VMCB pages of closed VMs linger in memory (see
:func:`~harness.discovery.vmcb.scan_vmcbs`) but are never reported as VMs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from harness.discovery.linux_kvm_common import (
    STATIC_PAGE_OFFSET,
    MemSlot,
    creator_tgid,
    x86_layout_base,
)
from harness.discovery.linux_kvm_common import KernelReader as _Kernel
from harness.discovery.linux_kvm_common import read_memslots as _memslots
from harness.discovery.linux_lists import container_of, list_for_each_entry, xa_for_each
from harness.discovery.vmcb import (
    CONTROL_AREA_SIZE,
    NCR3_ADDR_MASK,
    VmcbCandidate,
    VmcbControl,
    control_offsets,
    paging_levels,
    parse_vmrun_log,
    scan_vmcbs,
    signature_failures,
)
from harness.errors import InfraError
from harness.ktypes import KernelTypes
from harness.mem import PAGE_SIZE, PhysMem

__all__ = ["discover", "LiveVM", "VCpu", "MemSlot", "NEEDED_SYMBOLS", "BTF_MODULES",
           "INVALID_PAGE", "scan_vmcbs", "VmcbCandidate", "parse_vmrun_log", "paging_levels"]

NEEDED_SYMBOLS = ("vm_list", "page_offset_base")
BTF_MODULES = ("kvm", "kvm_amd")      # split BTF needed on top of vmlinux's
INVALID_PAGE = (1 << 64) - 1          # KVM's root.hpa of a vCPU without a root
NO_MEM_LIMIT = 1 << 52                # MAXPHYADDR bound when the RAM size is not given


@dataclass(frozen=True)
class VCpu:
    """One vCPU: its ``struct kvm_vcpu``, VMCB and roots (None: it never got a root)."""

    index: int            # vcpu_idx, the xarray index in kvm->vcpu_array
    vcpu_id: int          # the id userspace gave KVM_CREATE_VCPU
    addr: int             # struct vcpu_svm / kvm_vcpu (kernel virtual)
    vmcb_pa: int          # vmcb01.pa
    ncr3: int             # the VMCB's nested_cr3 as read
    root_hpa: int | None  # vcpu->arch.mmu->root.hpa
    asid: int             # the VMCB's ASID


@dataclass(frozen=True)
class LiveVM:
    """A VM on ``vm_list`` with its agreed nested root and the checks that passed."""

    kvm: int                          # struct kvm (kernel virtual)
    pid: int                          # kvm->userspace_pid: the creating thread's id
    vcpus: tuple[VCpu, ...]
    memslots: tuple[MemSlot, ...]
    root: int | None                  # the agreed nCR3, C-bit masked; None if no vCPU ran
    checks: Mapping[str, bool | None] = field(default_factory=dict)  # None: not available
    tgid: int | None = None           # kvm->mm->owner->tgid: the owning process's id


def discover(kmem: PhysMem, pmem: PhysMem, syms: Mapping[str, int], btf: KernelTypes, *,
             vmrun_vmcbs: Iterable[int] | None = None,
             mem_size: int | None = None) -> list[LiveVM]:
    """Every VM on KVM's ``vm_list``, cross-checked; raises InfraError on disagreement.

    *kmem* reads kernel virtual addresses (L1 halted outside guest mode),
    *pmem* physical ones; *syms* holds :data:`NEEDED_SYMBOLS`; *btf* has the
    split BTF of :data:`BTF_MODULES`.  *vmrun_vmcbs* are the addresses of QEMU's
    ``vmrun!`` lines, *mem_size* the L1 RAM size.
    """
    k = _Kernel(kmem, btf)
    base = x86_layout_base(kmem, syms, "page_offset_base", STATIC_PAGE_OFFSET)
    ctx = _Context(k, pmem, control_offsets(btf), base,
                   None if vmrun_vmcbs is None else frozenset(vmrun_vmcbs),
                   mem_size or NO_MEM_LIMIT)
    return [_live_vm(ctx, kvm)
            for kvm in list_for_each_entry(kmem, btf, syms["vm_list"], "struct kvm", "vm_list")]


@dataclass(frozen=True)
class _Context:
    """What every per-VM step needs."""

    k: _Kernel
    pmem: PhysMem
    offsets: dict[str, tuple[int, int]]
    page_offset_base: int
    vmruns: frozenset[int] | None
    mem_size: int


def _live_vm(ctx: _Context, kvm: int) -> LiveVM:
    """Read one ``struct kvm`` and cross-check each vCPU's VMCB."""
    checks: dict[str, bool | None] = {}
    vcpus = tuple(_vcpu(ctx, kvm, idx, ptr, checks) for idx, ptr in _vcpu_ptrs(ctx, kvm))
    return LiveVM(kvm=kvm, pid=ctx.k.field(kvm, "struct kvm", "userspace_pid"), vcpus=vcpus,
                  memslots=tuple(_memslots(ctx.k, kvm)), root=_agreed_root(kvm, vcpus),
                  checks=checks, tgid=creator_tgid(ctx.k, kvm))


def _vcpu_ptrs(ctx: _Context, kvm: int) -> list[tuple[int, int]]:
    """(vcpu_idx, struct kvm_vcpu *) from ``kvm->vcpu_array``."""
    xa = ctx.k.addr_of(kvm, "struct kvm", "vcpu_array")
    return list(xa_for_each(ctx.k.kmem, ctx.k.btf, xa))


def _vcpu(ctx: _Context, kvm: int, idx: int, vcpu: int,
          checks: dict[str, bool | None]) -> VCpu:
    """One vCPU: its roots from kernel data, its VMCB from physical memory."""
    k = ctx.k
    owner = k.field(vcpu, "struct kvm_vcpu", "kvm")
    if owner != kvm:
        raise InfraError(f"kvm {kvm:#x}: vcpu_array[{idx}] = {vcpu:#x} has vcpu->kvm "
                         f"{owner:#x}: not a vCPU of this VM")
    svm = container_of(vcpu, k.btf, "struct vcpu_svm", "vcpu")
    vmcb_pa = k.field(svm, "struct vcpu_svm", "vmcb01.pa")
    _check_direct_map(ctx, svm, vmcb_pa, checks)
    mmu = k.field(vcpu, "struct kvm_vcpu", "arch.mmu")
    root_hpa = k.field(mmu, "struct kvm_mmu", "root.hpa")
    root = None if root_hpa in (0, INVALID_PAGE) else root_hpa
    area = ctx.pmem.read(vmcb_pa, CONTROL_AREA_SIZE)
    control = VmcbControl.parse(area, ctx.offsets)
    where = f"kvm {kvm:#x} vcpu {idx} VMCB {vmcb_pa:#x}"
    if root is not None:
        _check_vmcb(ctx, where, control, root, vmcb_pa, checks)
    return VCpu(index=idx, vcpu_id=k.field(vcpu, "struct kvm_vcpu", "vcpu_id"), addr=svm,
                vmcb_pa=vmcb_pa, ncr3=control.nested_cr3, root_hpa=root, asid=control.asid)


def _check_direct_map(ctx: _Context, svm: int, vmcb_pa: int,
                      checks: dict[str, bool | None]) -> None:
    """``vmcb01.ptr`` must be ``vmcb01.pa`` seen through the direct map."""
    ptr = ctx.k.field(svm, "struct vcpu_svm", "vmcb01.ptr")
    if ptr != ctx.page_offset_base + vmcb_pa:
        raise InfraError(f"vcpu_svm {svm:#x}: vmcb01.ptr {ptr:#x} != page_offset_base "
                         f"{ctx.page_offset_base:#x} + vmcb01.pa {vmcb_pa:#x}")
    if vmcb_pa % PAGE_SIZE:
        raise InfraError(f"vcpu_svm {svm:#x}: vmcb01.pa {vmcb_pa:#x} not page aligned")
    checks["vmcb01.ptr == page_offset_base + vmcb01.pa"] = True


def _check_vmcb(ctx: _Context, where: str, c: VmcbControl, root: int, vmcb_pa: int,
                checks: dict[str, bool | None]) -> None:
    """nCR3 == root.hpa, VMCB signature (nCR3 without C-bit), and the vmrun! log."""
    ncr3 = c.nested_cr3 & NCR3_ADDR_MASK
    if ncr3 != root and not _differs_by_cbit(ncr3, root, ctx.mem_size):
        raise InfraError(f"{where}: VMCB nCR3 {c.nested_cr3:#x} != "
                         f"vcpu->arch.mmu->root.hpa {root:#x}")
    checks["vmcb nCR3 == arch.mmu->root.hpa"] = True
    fails = signature_failures(replace(c, nested_cr3=root), ctx.mem_size)
    if fails:
        raise InfraError(f"{where}: not a live NPT VMCB: {'; '.join(fails)}")
    checks["vmcb signature"] = True
    if ctx.vmruns is None:
        checks.setdefault("vmcb01.pa in QEMU vmrun! log", None)
    elif vmcb_pa not in ctx.vmruns:
        raise InfraError(f"{where}: vmcb01.pa {vmcb_pa:#x} never seen in QEMU's vmrun! log "
                         f"({len(ctx.vmruns)} distinct VMCBs there)")
    else:
        checks["vmcb01.pa in QEMU vmrun! log"] = True


def _differs_by_cbit(ncr3: int, root: int, mem_size: int) -> bool:
    """nCR3 is root.hpa plus one address bit above RAM: the SME C-bit (``__sme_set``)."""
    diff = ncr3 ^ root
    return ncr3 & diff == diff and diff & (diff - 1) == 0 and diff >= mem_size


def _agreed_root(kvm: int, vcpus: tuple[VCpu, ...]) -> int | None:
    """The one root every vCPU that has one shares."""
    roots = {v.root_hpa for v in vcpus if v.root_hpa is not None}
    if len(roots) > 1:
        shown = ", ".join(f"vcpu {v.index}: {v.root_hpa:#x}" for v in vcpus if v.root_hpa)
        raise InfraError(f"kvm {kvm:#x}: vCPUs disagree on the nested root ({shown})")
    return roots.pop() if roots else None
