"""FreeBSD bhyve: live VMs from ``/dev/vmm/<name>``, roots cross-checked, nested tables
walked; and, after boot, whether bhyve can run on this L1 at all.

Discovery is :func:`harness.discovery.freebsd_bhyve.discover`.  The walk is the NPT
walker on SVM (RVI; the top level limited to the slots covering ``mem_maps``, as
for OpenBSD's RVI pmaps) and the EPT walker on VMX, in FreeBSD's emulated A/D
flavour when the pmap has ``PMAP_EMULATE_AD_BITS``.  The VM's own facts the
``bhyve`` model needs (EPT or NPT, emulated A/D, 2 MiB leaves allowed) go into
``ObservedVM.model_options``; its memory maps, with their kinds (``ram``, ``rom``
for the boot ROM, ``device``) and protections, into ``slots``.

:func:`prepare_svm` / :func:`prepare_vmx` run once after boot: they read identcpu's
boot lines and load vmm.ko, and :func:`harness.bhyve_support.decide` either says
which backend runs or raises :class:`~harness.errors.SkipScenario` naming the
missing CPU feature (on QEMU's TCG: NRIP save).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.bhyve_support import IDENTCPU_GREP, decide, parse_cpu, parse_vmm_load
from harness.console import Console
from harness.discovery.freebsd_bhyve import FreeBsdKernelMem, LiveVM, discover
from harness.errors import SkipScenario
from harness.formats.base import WalkLimits
from harness.formats.ept import EptParams
from harness.formats.ept import walk as walk_ept
from harness.formats.npt import NptParams
from harness.formats.npt import walk as walk_npt
from harness.images.freebsd import VMM_LOAD_COMMAND
from harness.observe import KernelView, ObservedVM
from harness.observe.openbsd_vmm import rvi_top_slots

__all__ = ["observe", "prepare", "prepare_svm", "prepare_vmx", "model_options"]


def model_options(vm: LiveVM) -> dict[str, Any]:
    """What the ``bhyve`` model needs to know about this VM (BhyveOptions)."""
    return {"format": vm.format, "emulate_ad": vm.emulate_ad, "superpages": vm.superpages}


def _walk(view: KernelView, vm: LiveVM) -> tuple[Any, Any]:
    """The walk parameters and result of one VM's nested tables."""
    limits = WalkLimits(mem_size=view.mem.size)
    if vm.format == "npt":
        top = rvi_top_slots((m.gpa, m.len) for m in vm.maps)
        params: Any = NptParams(levels=4, flavour="hw", limits=limits, top_slots=top,
                                     maxphyaddr=view.facts.get("maxphyaddr", 52))
        return params, walk_npt(view.mem.phys, vm.root, params)
    flavour = "freebsd-emulated-ad" if vm.emulate_ad else "hw"
    params = EptParams(levels=4, flavour=flavour, ad_enabled=vm.ad_enabled, limits=limits,
                       maxphyaddr=view.facts.get("maxphyaddr", 52))
    return params, walk_ept(view.mem.phys, vm.root, params)


def _record(vm: LiveVM) -> dict[str, Any]:
    """What slat.json keeps of the discovery."""
    return {"vm_name": vm.name, "backend": vm.backend, "vm": hex(vm.vm),
            "softc": hex(vm.softc), "cdev": hex(vm.cdev), "pmap": hex(vm.pmap),
            "root": hex(vm.root), "eptp": None if vm.eptp is None else hex(vm.eptp),
            "emulate_ad": vm.emulate_ad, "superpages": vm.superpages,
            "segments": [{"segid": s.segid, "len": hex(s.len), "sysmem": s.sysmem,
                          "object": hex(s.object), "name": s.name} for s in vm.segs],
            "vcpus": [{"id": c.id, "vcpu": hex(c.addr),
                       "vmcb_pa": None if c.vmcb_pa is None else hex(c.vmcb_pa),
                       "ncr3": None if c.ncr3 is None else hex(c.ncr3)} for c in vm.vcpus],
            "checks": dict(vm.checks)}


def observe(view: KernelView) -> list[ObservedVM]:
    """Discover bhyve's live VMs and walk each nested root (L1 halted, in the kernel)."""
    kmem = FreeBsdKernelMem(view.mem.phys, view.mem.kernel)
    out = []
    for vm in discover(kmem, view.mem.phys, view.symbols, view.types, mem_size=view.mem.size):
        params, walk = _walk(view, vm)
        out.append(ObservedVM(
            name=f"bhyve:{vm.name}@{vm.vm:#x}", format=vm.format, root=vm.root,
            params=params, walk=walk,
            slots=[{"id": i, "gpa": m.gpa, "size": m.len, "hva": 0, "kind": m.kind,
                    "prot": m.prot_str, "segid": m.segid, "segoff": m.segoff}
                   for i, m in enumerate(vm.maps)],
            discovery=_record(vm), model_options=model_options(vm)))
    return out


def prepare(console: Console, backend: str) -> Mapping[str, str]:
    """Load vmm.ko and decide from the CPUID and the load whether *backend* runs here."""
    cpu = parse_cpu(console.run(IDENTCPU_GREP, timeout=60, check=False).output)
    load = parse_vmm_load(console.run(VMM_LOAD_COMMAND, timeout=300, check=False).output)
    support = decide(cpu, load)
    if support.backend != backend:
        raise SkipScenario(f"this L1's CPU runs bhyve on {support.backend.upper()}, not "
                           f"{backend.upper()}: choose the freebsd-bhyve-{support.backend} "
                           "hypervisor or another CPU")
    return {"bhyve.backend": support.backend, "bhyve.cpu_features": ",".join(support.features)}


def prepare_svm(console: Console) -> Mapping[str, str]:
    """bhyve on AMD SVM (nested paging and NRIP save)."""
    return prepare(console, "svm")


def prepare_vmx(console: Console) -> Mapping[str, str]:
    """bhyve on Intel VMX (EPT; unrestricted guest for the workload's L2)."""
    return prepare(console, "vmx")
