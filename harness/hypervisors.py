"""Registry of (guest OS, hypervisor) pairs that slatcheck can observe.

A record ties together how live VMs are found (discovery), which table
format their roots point at, and which reference model judges them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.registry import Registry

__all__ = ["Hypervisor", "HYPERVISORS", "default_hypervisor"]


@dataclass(frozen=True)
class Hypervisor:
    """One hypervisor as seen from one L1 guest OS."""

    name: str        # registry key, e.g. "linux-kvm-svm"
    guest_os: str    # console/guest OS registry name
    arch: str        # L1 architecture (uname -m)
    format: str      # FORMATS key of its second-level tables
    model: str       # MODELS key of its reference model
    observer: str    # "module:function" that discovers live VMs and walks their roots
    description: str
    model_options: Mapping[str, Any] = field(default_factory=dict)  # VMDesc.options for the model


HYPERVISORS: Registry[Hypervisor] = Registry("hypervisor")
HYPERVISORS.add("linux-kvm-svm", Hypervisor(
    name="linux-kvm-svm", guest_os="linux", arch="x86_64", format="npt", model="kvm-x86",
    observer="harness.observe.linux_kvm_svm:observe",
    description="Linux KVM on AMD SVM with nested paging (NPT), TDP MMU",
    model_options={"format": "npt"}))
HYPERVISORS.add("linux-kvm-arm64", Hypervisor(
    name="linux-kvm-arm64", guest_os="linux", arch="aarch64", format="stage2",
    model="kvm-arm64", observer="harness.observe.linux_kvm_arm64:observe",
    description="Linux KVM on arm64 (VHE or nVHE), stage-2 translation"))


def default_hypervisor(guest_os: str, arch: str) -> str:
    """The hypervisor a scenario gets when it names none."""
    for name, hv in HYPERVISORS.items():
        if hv.guest_os == guest_os and hv.arch == arch:
            return name
    return HYPERVISORS[f"{guest_os}-{arch}"].name  # raises, listing the valid names
