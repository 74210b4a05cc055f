"""The hypervisors slatcheck can observe: one frozen record each, in :data:`HYPERVISORS`.

A record ties together, by plain references a reader can follow: the guest OS
and architecture it runs in, the kernel symbols and module types its discovery
needs, the facts to read while L1 still runs, the observer that finds its live
VMs and walks their roots, the table format, and the reference models that may
judge it (the first is the default).

>>> HYPERVISORS["linux-kvm-svm"].format, HYPERVISORS["linux-kvm-svm"].models
('npt', ('kvm-x86',))
>>> default_hypervisor("linux", "aarch64")
'linux-kvm-arm64'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.arch import ARCHES, Arch
from harness.console import Console
from harness.discovery import freebsd_bhyve as discovery_bhyve
from harness.discovery import linux_kvm_arm64 as discovery_arm64
from harness.discovery import linux_kvm_svm as discovery_svm
from harness.discovery import linux_kvm_vmx as discovery_vmx
from harness.discovery import openbsd_vmm as discovery_openbsd
from harness.guests.linux_frames import ARM64_FRAMES, X86_FRAMES
from harness.images.dragonfly import PROC_SYMBOLS as DRAGONFLY_PROC_SYMBOLS
from harness.observe import KernelView, ObservedVM
from harness.observe import dragonfly_vkernel as observe_vkernel
from harness.observe import freebsd_bhyve as observe_bhyve
from harness.observe import linux_kvm_arm64 as observe_arm64
from harness.observe import linux_kvm_svm as observe_svm
from harness.observe import linux_kvm_vmx as observe_vmx
from harness.observe import openbsd_vmm as observe_openbsd
from harness.oracles import FrameRefs
from harness.registry import Registry

__all__ = ["Hypervisor", "HYPERVISORS", "default_hypervisor", "no_facts", "no_prepare"]


def no_facts(console: Console) -> Mapping[str, int]:
    """A hypervisor that needs nothing read over the console."""
    return {}


def no_prepare(console: Console) -> Mapping[str, str]:
    """A hypervisor that is ready as soon as its guest has booted."""
    return {}


@dataclass(frozen=True)
class Hypervisor:
    """One hypervisor as seen from one L1 guest OS."""

    name: str                        # registry key, e.g. "linux-kvm-svm"
    guest_os: str                    # GUEST_OSES name
    arch: str                        # ARCHES name of the L1
    format: str                      # FORMATS key of its second-level tables
    models: tuple[str, ...]          # MODELS keys that may judge it; the first is the default
    description: str
    observe: Callable[[KernelView], list[ObservedVM]]   # with L1 halted in the kernel
    symbols: tuple[str, ...] = ()    # kernel symbols discovery needs (read each boot)
    type_modules: tuple[str, ...] = ()  # modules whose types go on top of the kernel's
    facts: Callable[[Console], Mapping[str, int]] = no_facts  # read while L1 runs
    # run once after boot: make the hypervisor ready (load its module) and decide whether
    # it can run on this L1 at all (SkipScenario names the missing CPU feature); returns
    # provenance (recorded as ``hypervisor.<key>`` properties)
    prepare: Callable[[Console], Mapping[str, str]] = no_prepare
    fault_log: bool = False          # wants the emulator's nested-paging event log
    model_options: Mapping[str, Any] = field(default_factory=dict)  # VMDesc.options
    # GPA bits the workload's L2 reaches under this hypervisor's backend, when fewer than
    # the architecture's (Arch.l2_address_bits); None: the architecture's
    l2_address_bits: int | None = None
    frames: FrameRefs | None = None  # the L1 kernel's references to frames (freed_frame)

    @property
    def arch_record(self) -> Arch:
        """The :class:`~harness.arch.Arch` of its L1."""
        return ARCHES[self.arch]


HYPERVISORS: Registry[Hypervisor] = Registry("hypervisor")
HYPERVISORS.add("linux-kvm-svm", Hypervisor(
    name="linux-kvm-svm", guest_os="linux", arch="x86_64", format="npt", models=("kvm-x86",),
    description="Linux KVM on AMD SVM with nested paging (NPT), TDP MMU: vm_list -> "
                "vcpu_svm.vmcb01 / arch.mmu->root.hpa, cross-checked with the VMCB's nCR3 "
                "and QEMU's vmrun! log",
    observe=observe_svm.observe, symbols=discovery_svm.NEEDED_SYMBOLS + X86_FRAMES.symbols,
    type_modules=discovery_svm.BTF_MODULES, facts=observe_svm.facts, fault_log=True,
    model_options={"format": "npt"}, frames=X86_FRAMES))
HYPERVISORS.add("linux-kvm-vmx", Hypervisor(
    name="linux-kvm-vmx", guest_os="linux", arch="x86_64", format="ept", models=("kvm-x86",),
    description="Linux KVM on Intel VMX with EPT, TDP MMU: vm_list -> vcpu_vmx.vmcs01 / "
                "arch.mmu->root.hpa, cross-checked with the EPT pointer in the VMCS region "
                "and the debugger's current VMCS (Bochs)",
    observe=observe_vmx.observe, symbols=discovery_vmx.NEEDED_SYMBOLS + X86_FRAMES.symbols,
    type_modules=discovery_vmx.BTF_MODULES, facts=observe_vmx.facts, fault_log=True,
    model_options={"format": "ept"}, frames=X86_FRAMES))
HYPERVISORS.add("linux-kvm-arm64", Hypervisor(
    name="linux-kvm-arm64", guest_os="linux", arch="aarch64", format="stage2",
    models=("kvm-arm64",),
    description="Linux KVM on arm64 (VHE or nVHE), stage-2: vm_list -> arch.mmu "
                "(kvm_s2_mmu) -> pgt (kvm_pgtable), cross-pointer, the VM's VTCR, "
                "VTTBR_EL2/VTCR_EL2",
    observe=observe_arm64.observe, symbols=discovery_arm64.NEEDED_SYMBOLS,
    type_modules=discovery_arm64.BTF_MODULES, frames=ARM64_FRAMES))

HYPERVISORS.add("openbsd-vmm-rvi", Hypervisor(
    name="openbsd-vmm-rvi", guest_os="openbsd", arch="x86_64", format="npt",
    models=("openbsd-vmm",),      # the old design (openbsd-vmm-old) is modelled on EPT only
    description="OpenBSD vmm(4) on AMD SVM with nested paging (RVI): vmm_softc -> vm_list "
                "-> vm_pmap (or vm_map->pmap, by CTF member) -> pm_pdirpa, cross-checked "
                "with each vCPU's VMCB nCR3; only top-level slots covering vm_memranges",
    observe=observe_openbsd.observe, symbols=discovery_openbsd.NEEDED_SYMBOLS,
    model_options={"format": "npt"},
    l2_address_bits=32))     # hv_openbsd.c: 32-bit protected mode, paging off


HYPERVISORS.add("freebsd-bhyve-svm", Hypervisor(
    name="freebsd-bhyve-svm", guest_os="freebsd", arch="x86_64", format="npt",
    models=("bhyve",),
    description="FreeBSD bhyve (vmm.ko) on AMD SVM with nested paging (RVI): /dev/vmm/<name> "
                "-> vmmdev_softc -> struct vm -> vmspace pmap, cross-checked with "
                "svm_softc.nptp and each VMCB's nCR3; needs NRIP save (TCG: skip)",
    observe=observe_bhyve.observe, symbols=discovery_bhyve.NEEDED_SYMBOLS,
    type_modules=("vmm",), prepare=observe_bhyve.prepare_svm,
    model_options={"format": "npt"},
    l2_address_bits=32))     # hv_freebsd.c: 32-bit protected mode, paging off
HYPERVISORS.add("freebsd-bhyve-vmx", Hypervisor(
    name="freebsd-bhyve-vmx", guest_os="freebsd", arch="x86_64", format="ept",
    models=("bhyve",),
    description="FreeBSD bhyve (vmm.ko) on Intel VMX with EPT (hardware or emulated A/D "
                "bits): /dev/vmm/<name> -> vmmdev_softc -> struct vm -> vmspace pmap, "
                "cross-checked with vmx.eptp; needs EPT and unrestricted guest",
    observe=observe_bhyve.observe, symbols=discovery_bhyve.NEEDED_SYMBOLS,
    type_modules=("vmm",), prepare=observe_bhyve.prepare_vmx,
    model_options={"format": "ept"},
    l2_address_bits=32))     # hv_freebsd.c: 32-bit protected mode, paging off

HYPERVISORS.add("dragonfly-vkernel", Hypervisor(
    name="dragonfly-vkernel", guest_os="dragonfly", arch="x86_64", format="npt",
    models=("dragonfly-vkernel",),
    description="DragonFly vkernel (MAP_VPAGETABLE, software nested paging): allprocs -> "
                "each process's vm_map (and p_vkernel's vmspaces) -> VPAGETABLE entries "
                "(aux.master_pde, the memory image's object pages) and the vmspace's pmap "
                "(pm_pml4); needs a kernel with MAP_VPAGETABLE (stock: skip)",
    observe=observe_vkernel.observe, symbols=DRAGONFLY_PROC_SYMBOLS,
    prepare=observe_vkernel.prepare))


def default_hypervisor(guest_os: str, arch: str, image_hypervisor: str | None = None
                       ) -> str | None:
    """The hypervisor a scenario gets when it names none: the one its image is made for
    (recipe key ``hypervisor``), else the first for the guest OS and architecture
    (None: no such pair)."""
    if image_hypervisor is not None:
        return image_hypervisor
    for name, hv in HYPERVISORS.items():
        if hv.guest_os == guest_os and hv.arch == arch:
            return name
    return None
