"""Linux KVM on arm64: live VMs from vm_list, stage-2 roots cross-checked, tables walked.

``VTTBR_EL2`` and ``VTCR_EL2`` come from the debug target; the VMs from
:mod:`harness.discovery.linux_kvm_arm64`; each root is walked with the VM's own
IPA size and start level.  Kernel virtual addresses of the pgd are checked
against the emulator's own translation (``KernelView.target.translate``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.discovery.linux_kvm_arm64 import Stage2Root, discover
from harness.formats.base import WalkLimits
from harness.formats.stage2 import Stage2Params, root_entries
from harness.formats.stage2 import walk as walk_stage2
from harness.observe import KernelView, ObservedVM, process_ids

__all__ = ["observe"]


def observe(view: KernelView) -> list[ObservedVM]:
    """Discover live VMs and walk each stage-2 root (L1 is halted, not in EL0)."""
    target = view.target
    vttbr, vtcr = target.register("VTTBR_EL2"), target.register("VTCR_EL2")
    vms = discover(view.mem.kernel, view.mem.phys, view.symbols, view.types, vttbr=vttbr,
                   vtcr=vtcr, mem_size=view.mem.size, virt_to_phys=target.translate)
    out = []
    for vm in vms:
        s2 = vm.stage2
        params = Stage2Params(s2.ia_bits, s2.start_level,
                              limits=WalkLimits(mem_size=view.mem.size))
        slots = [{"id": s.id, "gpa": s.gpa, "size": s.size, "hva": s.hva, "flags": s.flags}
                 for s in vm.memslots]
        out.append(ObservedVM(
            name=f"kvm@{vm.kvm:#x}", format="stage2", root=vm.root, params=params,
            walk=walk_stage2(view.mem.phys, vm.root, params),
            slot_hvas=frozenset(s.hva for s in vm.memslots), slots=slots,
            discovery={**process_ids(vm.tgid, vm.pid), "checks": dict(vm.checks),
                       "stage2": _stage2_json(s2),
                       "root_pages": max(1, root_entries(params) // 512),
                       "VTTBR_EL2": hex(vttbr), "VTCR_EL2": hex(vtcr)}))
    return out


def _stage2_json(s2: Stage2Root) -> dict[str, Any]:
    """The Stage2Root as JSON (addresses in hex)."""
    return {k: (x if k in ("ia_bits", "start_level") else hex(x))
            for k, x in dataclasses.asdict(s2).items()}
