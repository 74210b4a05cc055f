"""DragonFly vkernel: the host PTEs of every ``MAP_VPAGETABLE`` region, and whether this
L1 kernel has ``MAP_VPAGETABLE`` at all.

Discovery is :func:`harness.discovery.dragonfly_vkernel.discover`.  Each region is
one :class:`~harness.observe.ObservedVM`: the x86-64 walk of its vmspace's pmap
(the NPT walker in its hardware flavour reads long-mode tables as user accesses),
limited to the PML4 slots that cover the region and clipped to ``[start, end)``
(the process's other mappings are not the vkernel's business); its memory image as
the object's resident pages (:class:`~harness.formats.vpte.ObjectImage`) and its
master PDE go into ``model_options`` for the ``dragonfly-vkernel`` model.  The
discovery record keeps a summary of the VPTE walk of the image.

:func:`prepare` runs once after boot: it enables the vkernel sysctl and runs the
workload's probe (a 2 MiB region read back through its VPTEs); a kernel without
``MAP_VPAGETABLE`` (stock DragonFly since its removal) or without the sysctl ends the
scenario in :class:`~harness.errors.SkipScenario` with what the probe said.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from harness.console import Console
from harness.discovery.dragonfly_vkernel import VpageRegion, discover
from harness.discovery.linux_kvm_common import KernelReader
from harness.errors import SkipScenario
from harness.formats.base import WalkLimits, WalkResult
from harness.formats.npt import NptParams
from harness.formats.npt import walk as walk_npt
from harness.formats.vpte import ObjectImage, VPTEParams
from harness.formats.vpte import walk as walk_vpte
from harness.images.dragonfly import WORKLOAD_BINARY
from harness.observe import KernelView, ObservedVM
from harness.observe.openbsd_vmm import rvi_top_slots

__all__ = ["observe", "prepare", "clip", "PROBE_COMMAND", "ENABLE_COMMAND", "probe_result"]

ENABLE_COMMAND = "sysctl vm.vkernel_enable=1"
PROBE_COMMAND = f"{WORKLOAD_BINARY} --probe"
_EVENT = re.compile(r"@@SLAT (\{.*\})")


def clip(walk: WalkResult, start: int, end: int) -> WalkResult:
    """The walk's leaves inside ``[start, end)`` (a leaf across an edge cut to it)."""
    out = WalkResult(findings=list(walk.findings), tables_read=walk.tables_read)
    for m in walk.mappings:
        lo, hi = max(m.gpa, start), min(m.gpa + m.size, end)
        if lo < hi:
            out.mappings.append(m if (lo, hi) == (m.gpa, m.gpa + m.size) else
                                m._replace(gpa=lo, hpa=m.hpa + (lo - m.gpa), size=hi - lo))
    return out


def _image(view: KernelView, r: VpageRegion) -> ObjectImage:
    return ObjectImage(view.mem.phys, r.pages, size=r.object_size)


def _vpte_summary(image: ObjectImage, r: VpageRegion) -> dict[str, Any]:
    """What the VPTE walk of the image gives (a few leaves and every finding)."""
    params = VPTEParams(base=r.start, size=r.size, limits=WalkLimits(mem_size=image.size))
    res = walk_vpte(image, r.master_pde, params)
    return {"leaves": len(res.mappings), "bytes": sum(m.size for m in res.mappings),
            "first": [{"va": hex(m.gpa), "image": hex(m.hpa), "size": hex(m.size), "w": m.w,
                       "dirty": m.dirty} for m in res.mappings[:4]],
            "findings": [f"{f.kind} at {f.gpa:#x}: {f.detail}" for f in res.findings]}


def _record(r: VpageRegion, image: ObjectImage) -> dict[str, Any]:
    return {"pid": r.pid, "pid_source": "p_pid", "comm": r.comm, "proc": hex(r.proc),
            "space": r.space, "vmspace": hex(r.vmspace), "entry": hex(r.entry),
            "start": hex(r.start), "end": hex(r.end), "master_pde": hex(r.master_pde),
            "object": hex(r.object), "offset": hex(r.offset), "prot": r.prot,
            "root": hex(r.root), "resident_pages": len(r.pages),
            "image_size": hex(r.object_size),
            "vpte": _vpte_summary(image, r), "checks": dict(r.checks)}


def observe(view: KernelView) -> list[ObservedVM]:
    """Discover the VPAGETABLE regions and walk each region's host page tables."""
    k = KernelReader(view.mem.kernel, view.types)
    out = []
    for r in discover(k, view.symbols, view.target.translate, view.mem.size):
        params = NptParams(levels=4, flavour="hw", limits=WalkLimits(mem_size=view.mem.size),
                           top_slots=rvi_top_slots([(r.start, r.size)]),
                           maxphyaddr=view.facts.get("maxphyaddr", 52))
        walk = clip(walk_npt(view.mem.phys, r.root, params), r.start, r.end)
        image = _image(view, r)
        out.append(ObservedVM(
            name=f"vkernel:{r.pid}:{r.space}@{r.entry:#x}", format="npt", root=r.root,
            params=params, walk=walk, slot_hvas=frozenset({r.start}),
            slots=[{"id": 0, "gpa": r.start, "size": r.size, "hva": r.start, "kind": "ram",
                    "prot": r.prot}],
            discovery=_record(r, image),
            model_options={"image": image, "master_pde": r.master_pde,
                           "image_size": r.object_size}))
    return out


def probe_result(output: str) -> tuple[bool, str]:
    """Whether the probe's output says MAP_VPAGETABLE works, and what it said."""
    for line in output.splitlines():
        m = _EVENT.search(line)
        if m is None:
            continue
        try:
            event = json.loads(m.group(1))
        except ValueError:
            continue
        if event.get("event") == "probe" and event.get("ok") == 1:
            return True, "probe ok"
        if event.get("event") == "error":
            return False, str(event.get("msg", ""))
    return False, output.strip()[-300:] or "no output"


def prepare(console: Console) -> Mapping[str, str]:
    """Enable the vkernel sysctl and probe MAP_VPAGETABLE; SkipScenario without it."""
    sysctl = console.run(ENABLE_COMMAND, timeout=60, check=False)
    ok, said = probe_result(console.run(PROBE_COMMAND, timeout=300, check=False).output)
    if not ok:
        why = "" if sysctl.status == 0 else \
            f" (`{ENABLE_COMMAND}` failed: {sysctl.output.strip()[-200:]})"
        raise SkipScenario(
            f"this DragonFly kernel does not translate MAP_VPAGETABLE mappings{why}: {said}; "
            "stock DragonFly removed MAP_VPAGETABLE, boot a kernel built with the vkernel "
            "patch (image dragonfly-amd64-vkernel, $SLATCHECK_DRAGONFLY_KERNEL)")
    return {"vkernel.probe": said, "vkernel.sysctl": sysctl.output.strip()}
