"""Linux KVM on Intel VMX: live VMs from vm_list, EPT roots cross-checked, EPT walked.

The walk takes its length and A/D setting from the EPT pointer KVM wrote into
the vCPU's VMCS region (when the CPU's VMCS layout is known), else a 4-level
walk from ``root.hpa`` with A/D unknown.  The debugger's view of each CPU's
current VMCS (registers ``vmcsptr`` and ``eptp`` of the target, when it has
them: Bochs's debugger does, QEMU's gdbstub has no VMX) is a third witness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from harness.console import Console
from harness.discovery.linux_kvm_vmx import CurrentVmcs, LiveVM, VCpu, discover
from harness.discovery.vmcs import parse_ept_violation_log
from harness.errors import InfraError
from harness.formats.base import WalkLimits, WalkResult
from harness.formats.ept import EptParams, decode_eptp
from harness.formats.ept import walk as walk_ept
from harness.observe import KernelView, ObservedVM, process_ids
from harness.target import Target

__all__ = ["observe", "facts", "current_vmcs"]

MAX_CPUS = 64


def facts(console: Console) -> Mapping[str, int]:
    """What must be read while L1 runs: the CPU's physical address width."""
    out = console.run("grep -m1 'address sizes' /proc/cpuinfo", timeout=30).output
    return {"maxphyaddr": int(out.split(":")[1].split("bits physical")[0])}


def current_vmcs(target: Target) -> tuple[CurrentVmcs, ...]:
    """Each CPU's current VMCS and cached EPT pointer, as far as the target tells."""
    out = []
    for cpu in range(MAX_CPUS):
        try:
            out.append(CurrentVmcs(cpu, target.register("vmcsptr", cpu),
                                   target.register("eptp", cpu)))
        except InfraError:
            break
    return tuple(out)


def _params(vm: LiveVM, base: EptParams) -> EptParams:
    """Walk length and A/D from the VM's EPT pointer, when it could be read."""
    if vm.eptp is None:
        return base
    _root, levels, _memtype, ad = decode_eptp(vm.eptp)
    return dataclasses.replace(base, levels=levels, ad_enabled=ad)


def _walk(view: KernelView, vm: LiveVM, params: EptParams) -> WalkResult:
    if vm.root is None:
        return WalkResult()          # no vCPU ran yet: no root, no mappings
    return walk_ept(view.mem.phys, vm.root, params)


def observe(view: KernelView) -> list[ObservedVM]:
    """Discover live VMs and walk each EPT (L1 is halted, in the kernel)."""
    current = current_vmcs(view.target)
    vms = discover(view.mem.kernel, view.mem.phys, view.symbols, view.types,
                   current=current, mem_size=view.mem.size)
    base = EptParams(levels=4, flavour="kvm", maxphyaddr=view.facts["maxphyaddr"],
                     limits=WalkLimits(mem_size=view.mem.size))
    faults = _ept_violations(view)
    out = []
    for vm in vms:
        params = _params(vm, base)
        walk = _walk(view, vm, params)
        slots = [{"id": s.id, "gpa": s.gpa, "size": s.size, "hva": s.hva, "flags": s.flags}
                 for s in vm.memslots]
        out.append(ObservedVM(
            name=f"kvm@{vm.kvm:#x}", format="ept", root=vm.root or 0, params=params,
            walk=walk, slot_hvas=frozenset(s.hva for s in vm.memslots), slots=slots,
            discovery={**process_ids(vm.tgid, vm.pid),
                       "eptp": None if vm.eptp is None else hex(vm.eptp),
                       "checks": dict(vm.checks), "vcpus": [_vcpu_json(v) for v in vm.vcpus],
                       "current_vmcs": [_cur_json(c) for c in current],
                       "ept_violations": faults}))
    return out


def _ept_violations(view: KernelView) -> list[str] | None:
    """The GPAs of the emulator's EPT-violation log so far (all VMs), when it keeps one."""
    if view.fault_log is None or not view.fault_log.exists():
        return None
    return [hex(g) for g in parse_ept_violation_log(view.fault_log.read_text(errors="replace"))]


def _vcpu_json(v: VCpu) -> dict[str, Any]:
    return {k: (hex(x) if isinstance(x, int) and k not in ("index", "vcpu_id") else x)
            for k, x in dataclasses.asdict(v).items()}


def _cur_json(c: CurrentVmcs) -> dict[str, Any]:
    return {"cpu": c.cpu, "vmcsptr": hex(c.vmcsptr), "eptp": hex(c.eptp)}
