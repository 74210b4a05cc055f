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
from harness.discovery import linux_kvm_arm64 as discovery_arm64
from harness.discovery import linux_kvm_svm as discovery_svm
from harness.discovery import linux_kvm_vmx as discovery_vmx
from harness.observe import KernelView, ObservedVM
from harness.observe import linux_kvm_arm64 as observe_arm64
from harness.observe import linux_kvm_svm as observe_svm
from harness.observe import linux_kvm_vmx as observe_vmx
from harness.registry import Registry

__all__ = ["Hypervisor", "HYPERVISORS", "default_hypervisor", "no_facts"]


def no_facts(console: Console) -> Mapping[str, int]:
    """A hypervisor that needs nothing read over the console."""
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
    fault_log: bool = False          # wants the emulator's nested-paging event log
    model_options: Mapping[str, Any] = field(default_factory=dict)  # VMDesc.options

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
    observe=observe_svm.observe, symbols=discovery_svm.NEEDED_SYMBOLS,
    type_modules=discovery_svm.BTF_MODULES, facts=observe_svm.facts, fault_log=True,
    model_options={"format": "npt"}))
HYPERVISORS.add("linux-kvm-vmx", Hypervisor(
    name="linux-kvm-vmx", guest_os="linux", arch="x86_64", format="ept", models=("kvm-x86",),
    description="Linux KVM on Intel VMX with EPT, TDP MMU: vm_list -> vcpu_vmx.vmcs01 / "
                "arch.mmu->root.hpa, cross-checked with the EPT pointer in the VMCS region "
                "and the debugger's current VMCS (Bochs)",
    observe=observe_vmx.observe, symbols=discovery_vmx.NEEDED_SYMBOLS,
    type_modules=discovery_vmx.BTF_MODULES, facts=observe_vmx.facts, fault_log=True,
    model_options={"format": "ept"}))
HYPERVISORS.add("linux-kvm-arm64", Hypervisor(
    name="linux-kvm-arm64", guest_os="linux", arch="aarch64", format="stage2",
    models=("kvm-arm64",),
    description="Linux KVM on arm64 (VHE or nVHE), stage-2: vm_list -> arch.mmu "
                "(kvm_s2_mmu) -> pgt (kvm_pgtable), cross-pointer, the VM's VTCR, "
                "VTTBR_EL2/VTCR_EL2",
    observe=observe_arm64.observe, symbols=discovery_arm64.NEEDED_SYMBOLS,
    type_modules=discovery_arm64.BTF_MODULES))


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
