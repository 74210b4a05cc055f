"""OpenBSD vmm(4): live VMs from ``vmm_softc``, roots cross-checked, nested tables walked.

Discovery is :func:`harness.discovery.openbsd_vmm.discover` (``vm_pmap`` or
``vm_map->pmap`` chosen by CTF member names, nCR3 / EPTP cross-checks).  The
walk is limited to what vmm can have mapped: on RVI, ``pmap_convert`` leaves
the top level as ``pmap_pdp_ctor`` built it (the recursive slot 255, the
kernel slots from 256 and the direct map from 507, none with ``PG_u``), so
only the top-level slots that cover a ``vm_memranges`` entry are walked
(:func:`rvi_top_slots`); on EPT the top page is cleared and every slot is
walked.  Each VM's discovery record goes into ``slat.json``.

>>> rvi_top_slots([(0, 0x100000), (0xF0000000, 0x10000000)])
(0,)
>>> rvi_top_slots([(0x8000000000 - 0x1000, 0x2000)])
(0, 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.ctf import Ctf
from harness.discovery.openbsd_vmm import DirectMapOrVirt, LiveVM, discover
from harness.errors import InfraError
from harness.formats.base import WalkLimits
from harness.formats.ept import EptParams
from harness.formats.ept import walk as walk_ept
from harness.formats.npt import NptParams
from harness.formats.npt import walk as walk_npt
from harness.observe import KernelView, ObservedVM

__all__ = ["observe", "rvi_top_slots", "TOP_SLOT_BYTES"]

TOP_SLOT_BYTES = 1 << 39            # one PML4 entry maps 512 GiB
EPTP_AD_ENABLE = 1 << 6             # IA32_EPT_AD_BITS_ENABLE (the old design sets it)


def rvi_top_slots(ranges: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """The top-level (PML4) slots that cover any ``(gpa, size)`` range."""
    slots: set[int] = set()
    for gpa, size in ranges:
        if size > 0:
            slots.update(range(gpa // TOP_SLOT_BYTES, (gpa + size - 1) // TOP_SLOT_BYTES + 1))
    return tuple(sorted(slots))


def _walk(view: KernelView, vm: LiveVM) -> tuple[Any, Any]:
    """The walk parameters and result of one VM's nested tables."""
    limits = WalkLimits(mem_size=view.mem.size)
    if vm.format == "npt":
        top = rvi_top_slots((r.gpa, r.size) for r in vm.memranges)
        params: Any = NptParams(levels=4, flavour="hw", limits=limits, top_slots=top,
                                     maxphyaddr=view.facts.get("maxphyaddr", 52))
        return params, walk_npt(view.mem.phys, vm.root, params)
    ad = bool(vm.eptp is not None and vm.eptp & EPTP_AD_ENABLE)
    params = EptParams(levels=4, ad_enabled=ad, limits=limits,
                       maxphyaddr=view.facts.get("maxphyaddr", 52))
    return params, walk_ept(view.mem.phys, vm.root, params)


def _record(vm: LiveVM) -> dict[str, Any]:
    """What slat.json keeps of the discovery: identity, design, ranges, cross-checks."""
    return {"vm_id": vm.id, "vm_name": vm.name, "pid": vm.creator_pid,
            "pid_source": "vm_creator_pid", "design": vm.design,
            "mode": vm.format, "vm": hex(vm.vm), "pmap": hex(vm.pmap), "root": hex(vm.root),
            "eptp": None if vm.eptp is None else hex(vm.eptp),
            "memranges": [{"gpa": hex(r.gpa), "size": hex(r.size), "va": hex(r.va),
                           "kind": r.kind} for r in vm.memranges],
            "memory_slots": [hex(s) for s in vm.memory_slots],
            "vcpus": [{"id": c.id, "vcpu": hex(c.addr), "control_pa": hex(c.control_pa),
                       "ncr3": None if c.ncr3 is None else hex(c.ncr3)} for c in vm.vcpus],
            "checks": dict(vm.checks)}


def observe(view: KernelView) -> list[ObservedVM]:
    """Discover vmm's live VMs and walk each nested root (L1 halted, in the kernel)."""
    if not isinstance(view.types, Ctf):
        raise InfraError("OpenBSD vmm discovery reads CTF types; got "
                         f"{type(view.types).__name__}")
    kmem = DirectMapOrVirt(view.mem.phys, view.mem.kernel)
    vms = discover(kmem, view.mem.phys, view.symbols, view.types, mem_size=view.mem.size)
    out = []
    for vm in vms:
        params, walk = _walk(view, vm)
        mapped = [r for r in vm.memranges if r.kind != "mmio"]
        out.append(ObservedVM(
            name=f"vmm:{vm.id}@{vm.vm:#x}", format=vm.format, root=vm.root, params=params,
            walk=walk, slot_hvas=frozenset(r.va for r in mapped),
            slots=[{"id": r.index, "gpa": r.gpa, "size": r.size, "hva": r.va,
                    "kind": r.kind} for r in vm.memranges],
            discovery=_record(vm)))
    return out
