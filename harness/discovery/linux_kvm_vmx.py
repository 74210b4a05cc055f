"""Live KVM VMs and their EPT roots in an L1 Linux on Intel VMX.

The walk follows KVM's own data, with every offset from BTF (vmlinux plus the
split BTF of ``kvm`` and ``kvm_intel``) and the addresses from kallsyms:

``vm_list`` -> each ``struct kvm`` -> ``userspace_pid``; ``vcpu_array``
(xarray) -> ``struct vcpu_vmx`` (whose first member ``vcpu`` is the
``struct kvm_vcpu``) -> ``vcpu->arch.mmu->root.hpa`` (the EPT root),
``vmcs01.vmcs`` (the vCPU's VMCS region, a direct-map address) and
``loaded_vmcs``; ``memslots[0]`` -> ``gfn_tree`` as on SVM.

Cross-checks, each recorded in ``checks`` (True, or None when not available);
a disagreement raises :class:`~harness.errors.InfraError` showing both values:

* ``vmcs01.vmcs`` is a page of the direct map below the RAM size;
* the VMCS region's EPT pointer, read at the CPU's own layout
  (:mod:`harness.discovery.vmcs`: Bochs's is known, a hardware CPU's is not),
  names ``root.hpa`` with write-back memory type and a 4- or 5-level walk
  (``construct_eptp``: ``root | VMX_EPTP_MT_WB | VMX_EPTP_PWL_4/5 | A/D``);
* the debugger's current VMCS (``vmcsptr``) is one of the live vCPUs' VMCS
  regions, and the EPT pointer it caches for it is the same as in memory and
  in KVM's root (only one VMCS is current per CPU).

Only ``vm_list`` members are reported: VMCS regions of closed VMs linger in
memory (:func:`~harness.discovery.vmcs.scan_vmcss` finds them) but are never
VMs.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from harness.discovery.vmcs import (
    VMCS_EPT_POINTER,
    VMCS_LAYOUTS,
    VmcsLayout,
    eptp_failures,
    read_field,
    vmcs_revision,
)
from harness.errors import InfraError
from harness.formats.ept import decode_eptp
from harness.ktypes import KernelTypes
from harness.mem import PAGE_SIZE, PhysMem

__all__ = ["discover", "LiveVM", "VCpu", "MemSlot", "CurrentVmcs", "NEEDED_SYMBOLS",
           "BTF_MODULES", "INVALID_PAGE", "NO_VMCS"]

NEEDED_SYMBOLS = ("vm_list", "page_offset_base")
BTF_MODULES = ("kvm", "kvm_intel")    # split BTF needed on top of vmlinux's
INVALID_PAGE = (1 << 64) - 1          # KVM's root.hpa of a vCPU without a root
NO_VMCS = (1 << 64) - 1               # a CPU's VMCS pointer when none is current
NO_MEM_LIMIT = 1 << 52


@dataclass(frozen=True)
class CurrentVmcs:
    """What the emulator's debugger says of a CPU: its current VMCS and cached EPTP."""

    cpu: int
    vmcsptr: int                      # NO_VMCS when none is current
    eptp: int


@dataclass(frozen=True)
class VCpu:
    """One vCPU: its ``struct vcpu_vmx``, VMCS region and EPT root (None: none yet)."""

    index: int            # vcpu_idx, the xarray index in kvm->vcpu_array
    vcpu_id: int          # the id userspace gave KVM_CREATE_VCPU
    addr: int             # struct vcpu_vmx / kvm_vcpu (kernel virtual)
    vmcs_pa: int          # vmcs01.vmcs, physical
    revision: int         # the VMCS region's revision identifier
    eptp: int | None      # the region's EPT pointer (None: layout not known)
    root_hpa: int | None  # vcpu->arch.mmu->root.hpa
    current_on: tuple[int, ...] = ()   # CPUs whose current VMCS this is


@dataclass(frozen=True)
class LiveVM:
    """A VM on ``vm_list`` with its agreed EPT root and the checks that passed."""

    kvm: int
    pid: int
    vcpus: tuple[VCpu, ...]
    memslots: tuple[MemSlot, ...]
    root: int | None                  # the agreed root; None if no vCPU has one
    eptp: int | None                  # the agreed EPT pointer (None: not readable)
    checks: Mapping[str, bool | None] = field(default_factory=dict)
    tgid: int | None = None           # kvm->mm->owner->tgid: the owning process's id


@dataclass(frozen=True)
class _Context:
    k: _Kernel
    pmem: PhysMem
    page_offset_base: int
    mem_size: int
    layouts: Mapping[int, VmcsLayout]
    current: tuple[CurrentVmcs, ...]


def discover(kmem: PhysMem, pmem: PhysMem, syms: Mapping[str, int], btf: KernelTypes, *,
             current: tuple[CurrentVmcs, ...] = (), mem_size: int | None = None,
             layouts: Mapping[int, VmcsLayout] = VMCS_LAYOUTS) -> list[LiveVM]:
    """Every VM on KVM's ``vm_list``, cross-checked; raises InfraError on disagreement.

    *kmem* reads kernel virtual addresses (L1 halted outside guest mode), *pmem*
    physical ones; *syms* holds :data:`NEEDED_SYMBOLS`; *btf* has the split BTF
    of :data:`BTF_MODULES`; *current* is what the debugger says of each CPU's
    current VMCS (empty: no such oracle).
    """
    base = x86_layout_base(kmem, syms, "page_offset_base", STATIC_PAGE_OFFSET)
    ctx = _Context(_Kernel(kmem, btf), pmem, base,
                   mem_size or NO_MEM_LIMIT, layouts, current)
    vms = [_live_vm(ctx, kvm) for kvm in
           list_for_each_entry(kmem, btf, syms["vm_list"], "struct kvm", "vm_list")]
    agreed = _check_current(ctx, vms)
    key = "debugger's current VMCS and EPTP agree"
    return [replace(vm, checks={**vm.checks, key: agreed if any(v.current_on for v in vm.vcpus)
                                else None}) for vm in vms]


def _live_vm(ctx: _Context, kvm: int) -> LiveVM:
    checks: dict[str, bool | None] = {}
    xa = ctx.k.addr_of(kvm, "struct kvm", "vcpu_array")
    vcpus = tuple(_vcpu(ctx, kvm, idx, ptr, checks)
                  for idx, ptr in xa_for_each(ctx.k.kmem, ctx.k.btf, xa))
    root, eptp = _agreed(kvm, vcpus)
    return LiveVM(kvm=kvm, pid=ctx.k.field(kvm, "struct kvm", "userspace_pid"), vcpus=vcpus,
                  memslots=tuple(_memslots(ctx.k, kvm)), root=root, eptp=eptp, checks=checks,
                  tgid=creator_tgid(ctx.k, kvm))


def _vcpu(ctx: _Context, kvm: int, idx: int, vcpu: int,
          checks: dict[str, bool | None]) -> VCpu:
    """One vCPU: its root from kernel data, its VMCS region from physical memory."""
    k = ctx.k
    owner = k.field(vcpu, "struct kvm_vcpu", "kvm")
    if owner != kvm:
        raise InfraError(f"kvm {kvm:#x}: vcpu_array[{idx}] = {vcpu:#x} has vcpu->kvm "
                         f"{owner:#x}: not a vCPU of this VM")
    vmx = container_of(vcpu, k.btf, "struct vcpu_vmx", "vcpu")
    vmcs_pa = _vmcs_pa(ctx, vmx, checks)
    loaded = k.field(vmx, "struct vcpu_vmx", "loaded_vmcs")
    if loaded != k.addr_of(vmx, "struct vcpu_vmx", "vmcs01"):
        raise InfraError(f"vcpu_vmx {vmx:#x}: loaded_vmcs {loaded:#x} is not its vmcs01: "
                         "the vCPU runs a nested guest, whose EPT is not the VM's")
    checks["loaded_vmcs == &vmcs01"] = True
    mmu = k.field(vcpu, "struct kvm_vcpu", "arch.mmu")
    root_hpa = k.field(mmu, "struct kvm_mmu", "root.hpa")
    root = None if root_hpa in (0, INVALID_PAGE) else root_hpa
    region = ctx.pmem.read(vmcs_pa, PAGE_SIZE)
    revision = vmcs_revision(region)
    layout = ctx.layouts.get(revision)
    eptp = None if layout is None else read_field(region, layout, VMCS_EPT_POINTER)
    where = f"kvm {kvm:#x} vcpu {idx} VMCS {vmcs_pa:#x}"
    if root is not None:
        _check_eptp(ctx, where, eptp, root, checks)
    return VCpu(index=idx, vcpu_id=k.field(vcpu, "struct kvm_vcpu", "vcpu_id"), addr=vmx,
                vmcs_pa=vmcs_pa, revision=revision, eptp=eptp, root_hpa=root,
                current_on=tuple(c.cpu for c in ctx.current if c.vmcsptr == vmcs_pa))


def _vmcs_pa(ctx: _Context, vmx: int, checks: dict[str, bool | None]) -> int:
    """``vmcs01.vmcs`` seen through the direct map: a page below the RAM size."""
    va = ctx.k.field(vmx, "struct vcpu_vmx", "vmcs01.vmcs")
    pa = va - ctx.page_offset_base
    if not 0 <= pa < ctx.mem_size or pa % PAGE_SIZE:
        raise InfraError(f"vcpu_vmx {vmx:#x}: vmcs01.vmcs {va:#x} is not a page of the "
                         f"direct map at {ctx.page_offset_base:#x} below {ctx.mem_size:#x}")
    checks["vmcs01.vmcs in the direct map"] = True
    return pa


def _check_eptp(ctx: _Context, where: str, eptp: int | None, root: int,
                checks: dict[str, bool | None]) -> None:
    """The VMCS region's EPT pointer names root.hpa and is one KVM would build."""
    key = "VMCS EPT pointer == arch.mmu->root.hpa"
    if eptp is None:
        checks.setdefault(key, None)
        return
    if decode_eptp(eptp)[0] != root:
        raise InfraError(f"{where}: EPT pointer {eptp:#x} != vcpu->arch.mmu->root.hpa "
                         f"{root:#x}")
    fails = eptp_failures(eptp, ctx.mem_size)
    if fails:
        raise InfraError(f"{where}: EPT pointer {eptp:#x} is not one KVM builds: "
                         f"{'; '.join(fails)}")
    checks[key] = True


def _check_current(ctx: _Context, vms: list[LiveVM]) -> bool | None:
    """Each CPU's current VMCS (debugger) is a live vCPU's, with the same EPT pointer.

    True when at least one CPU had a current VMCS and all agreed; None when no CPU
    had one (or there is no debugger oracle).
    """
    owners = {v.vmcs_pa: v for vm in vms for v in vm.vcpus}
    agreed: bool | None = None
    for cur in ctx.current:
        if cur.vmcsptr == NO_VMCS:
            continue
        v = owners.get(cur.vmcsptr)
        if v is None:
            raise InfraError(f"CPU {cur.cpu}'s current VMCS {cur.vmcsptr:#x} belongs to no "
                             f"vCPU of a VM on vm_list ({sorted(hex(p) for p in owners)})")
        if v.eptp is not None and cur.eptp != v.eptp:
            raise InfraError(f"CPU {cur.cpu}: the debugger's EPTP {cur.eptp:#x} for VMCS "
                             f"{cur.vmcsptr:#x} != {v.eptp:#x} in the VMCS region")
        if v.root_hpa is not None and decode_eptp(cur.eptp)[0] != v.root_hpa:
            raise InfraError(f"CPU {cur.cpu}: the debugger's EPTP {cur.eptp:#x} does not "
                             f"name vcpu->arch.mmu->root.hpa {v.root_hpa:#x}")
        agreed = True
    return agreed


def _agreed(kvm: int, vcpus: tuple[VCpu, ...]) -> tuple[int | None, int | None]:
    """The one root (and EPT pointer) every vCPU that has one shares."""
    roots = {v.root_hpa for v in vcpus if v.root_hpa is not None}
    if len(roots) > 1:
        shown = ", ".join(f"vcpu {v.index}: {v.root_hpa:#x}" for v in vcpus if v.root_hpa)
        raise InfraError(f"kvm {kvm:#x}: vCPUs disagree on the EPT root ({shown})")
    eptps = {v.eptp for v in vcpus if v.root_hpa is not None and v.eptp is not None}
    if len(eptps) > 1:
        raise InfraError(f"kvm {kvm:#x}: vCPUs' VMCS regions disagree on the EPT pointer "
                         f"({sorted(hex(e) for e in eptps)})")
    return (roots.pop() if roots else None), (eptps.pop() if eptps else None)
