"""Finding the live VMs and their nested roots from the L1 kernel's own data.

:data:`DISCOVERY` maps ``"<guest os>-<hypervisor>"`` to a :class:`Discovery`
record: the kallsyms it needs, the modules whose split BTF it needs, and its
``discover(kmem, pmem, syms, btf, *, vmrun_vmcbs=None, mem_size=None)``.

>>> DISCOVERY["linux-kvm-svm"].needed_symbols
('vm_list', 'page_offset_base')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.discovery import linux_kvm_arm64, linux_kvm_svm
from harness.discovery.linux_kvm_svm import LiveVM, MemSlot, VCpu, discover
from harness.discovery.vmcb import (
    VmcbCandidate,
    VmcbControl,
    paging_levels,
    parse_vmrun_log,
    scan_vmcbs,
)
from harness.registry import Registry

__all__ = ["DISCOVERY", "Discovery", "LiveVM", "VCpu", "MemSlot", "VmcbCandidate",
           "VmcbControl", "discover", "scan_vmcbs", "parse_vmrun_log", "paging_levels"]


@dataclass(frozen=True)
class Discovery:
    """How to find the live VMs of one hypervisor in one guest OS."""

    name: str                           # "linux-kvm-svm"
    description: str
    needed_symbols: tuple[str, ...]     # fetch these from /proc/kallsyms
    btf_modules: tuple[str, ...]        # modules whose split .BTF goes on top of vmlinux's
    discover: Callable[..., list[Any]]  # discover(kmem, pmem, syms, btf, **kw) -> [LiveVM]


DISCOVERY: Registry[Discovery] = Registry("discovery")
DISCOVERY.add("linux-kvm-svm", Discovery(
    name="linux-kvm-svm",
    description="Linux KVM on AMD SVM: vm_list -> vcpu_svm.vmcb01 / arch.mmu->root.hpa, "
                "cross-checked with the VMCB's nCR3 and QEMU's vmrun! log",
    needed_symbols=linux_kvm_svm.NEEDED_SYMBOLS,
    btf_modules=linux_kvm_svm.BTF_MODULES,
    discover=linux_kvm_svm.discover,
))
DISCOVERY.add("linux-kvm-arm64", Discovery(
    name="linux-kvm-arm64",
    description="Linux KVM on arm64: vm_list -> arch.mmu (kvm_s2_mmu) -> pgt (kvm_pgtable), "
                "cross-pointer, linear map, the VM's VTCR, and VTTBR_EL2/VTCR_EL2",
    needed_symbols=linux_kvm_arm64.NEEDED_SYMBOLS,
    btf_modules=linux_kvm_arm64.BTF_MODULES,
    discover=linux_kvm_arm64.discover,
))
