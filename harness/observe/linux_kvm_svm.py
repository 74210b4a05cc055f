"""Linux KVM on AMD SVM: live VMs from vm_list, roots cross-checked, NPT walked."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from harness.console import Console
from harness.discovery.linux_kvm_svm import VCpu, discover, paging_levels, parse_vmrun_log
from harness.formats.base import WalkLimits, WalkResult
from harness.formats.npt import NptParams
from harness.formats.npt import walk as walk_npt
from harness.observe import KernelView, ObservedVM, process_ids

__all__ = ["observe", "facts"]


def facts(console: Console) -> Mapping[str, int]:
    """What must be read while L1 runs: the CPU's physical address width."""
    out = console.run("grep -m1 'address sizes' /proc/cpuinfo", timeout=30).output
    return {"maxphyaddr": int(out.split(":")[1].split("bits physical")[0])}


def _vmrun_vmcbs(view: KernelView) -> list[int] | None:
    """The VMCB addresses of QEMU's own ``vmrun!`` lines, when it logged them."""
    if view.fault_log is None or not view.fault_log.exists():
        return None
    return parse_vmrun_log(view.fault_log.read_text(errors="replace"))


def observe(view: KernelView) -> list[ObservedVM]:
    """Discover live VMs and walk each nested root (L1 is halted, in the kernel)."""
    levels = paging_levels(view.target.register("cr4"))
    vms = discover(view.mem.kernel, view.mem.phys, view.symbols, view.types,
                   vmrun_vmcbs=_vmrun_vmcbs(view), mem_size=view.mem.size)
    params = NptParams(levels=levels, flavour="kvm", maxphyaddr=view.facts["maxphyaddr"],
                       limits=WalkLimits(mem_size=view.mem.size))
    out = []
    for vm in vms:
        # a VM whose vCPUs never ran has no root yet, and so no mappings
        walk = walk_npt(view.mem.phys, vm.root, params) if vm.root is not None \
            else WalkResult()
        slots = [{"id": s.id, "gpa": s.gpa, "size": s.size, "hva": s.hva, "flags": s.flags}
                 for s in vm.memslots]
        out.append(ObservedVM(
            name=f"kvm@{vm.kvm:#x}", format="npt", root=vm.root or 0, params=params, walk=walk,
            slot_hvas=frozenset(s.hva for s in vm.memslots), slots=slots,
            discovery={**process_ids(vm.tgid, vm.pid), "levels": levels,
                       "checks": dict(vm.checks), "vcpus": [_vcpu_json(v) for v in vm.vcpus]}))
    return out


def _vcpu_json(v: VCpu) -> dict[str, Any]:
    return {k: (hex(x) if isinstance(x, int) and k not in ("index", "vcpu_id", "asid") else x)
            for k, x in dataclasses.asdict(v).items()}
