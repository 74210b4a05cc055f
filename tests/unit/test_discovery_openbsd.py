"""OpenBSD vmm discovery on constructed L1 memory, laid out by CTF fixtures.

The struct layouts come from the independent CTF writer (tests/unit/ctf_writer.py):
the fixture writes kernel memory at the writer's offsets, the discovery reads it
back through harness.ctf; the two only meet in the bytes.  Both designs of
``struct vm`` are built: the vm_pmap one (vmm.h rev 1.11) and the older vmspace
one (``vm_map->pmap``, vmm.h rev 1.3).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from ctf_writer import CtfWriter

from harness.ctf import Ctf
from harness.discovery.openbsd_vmm import (
    DESIGN_NEW,
    DESIGN_OLD,
    KERNBASE,
    PMAP_DIRECT_BASE,
    DirectMapMem,
    discover,
)
from harness.errors import InfraError, MemoryReadError
from harness.mem import DictMem

MEM = 64 << 20
SOFTC_SYM = KERNBASE + 0x1A00000          # &vmm_softc in the kernel image's data


def kva(pa: int) -> int:
    return PMAP_DIRECT_BASE + pa


@dataclass
class Layout:
    """The writer's types and offsets for one kernel."""

    w: CtfWriter
    ids: dict[str, int] = field(default_factory=dict)

    def off(self, struct_name: str, member: str) -> int:
        return self.w.layout_of(self.ids[struct_name])[member]

    def size(self, struct_name: str) -> int:
        return self.w.size_of(self.ids[struct_name])


def kernel_types(design: str, rename: dict[str, str] | None = None) -> Layout:
    """vmm's structs as the kernel declares them, in *design* (new or old)."""
    rn = rename or {}

    def n(name: str) -> str:
        return rn.get(name, name)

    w = CtfWriter()
    L = Layout(w)
    u64 = w.int_("unsigned", 8)
    u32 = w.int_("unsigned", 4)
    u16 = w.int_("unsigned", 2)
    i32 = w.int_("signed", 4, signed=True)
    ch = w.int_("char", 1, signed=True)
    paddr = w.typedef("paddr_t", u64)
    vaddr = w.typedef("vaddr_t", u64)
    size_t = w.typedef("size_t", u64)
    uint32 = w.typedef("uint32_t", u32)
    pid = w.typedef("pid_t", i32)
    vm = w.declare("struct vm")
    vcpu = w.declare("struct vcpu")
    pmap = w.declare("struct pmap")
    uao = w.forward("struct uvm_object")
    pmap_t = w.typedef("pmap_t", w.ptr(pmap))
    L.ids["range"] = w.struct("struct vm_mem_range", [("vmr_gpa", paddr), ("vmr_va", vaddr),
                                                      ("vmr_size", size_t), ("vmr_type", i32)])
    vm_head = w.struct("struct vmlist_head", [("slh_first", w.ptr(vm))])
    vcpu_head = w.struct("struct vcpu_head", [("slh_first", w.ptr(vcpu))])
    vm_link = w.struct("", [("sle_next", w.ptr(vm))])
    vcpu_link = w.struct("", [("sle_next", w.ptr(vcpu))])
    rwlock = w.struct("struct rwlock", [("rwl_owner", u64), ("rwl_name", w.ptr(ch))])
    L.ids["pmap"] = w.struct("struct pmap", [
        ("pm_mtx", w.array(u64, 3)), ("pm_obj", w.array(u64, 3 * 12)), ("pm_pdir", w.ptr(u64)),
        ("pm_pdir_intel", w.ptr(u64)), (n("pm_pdirpa"), paddr), ("pm_pdirpa_intel", paddr),
        ("pm_ptphint", w.array(u64, 3)), ("pm_stats", w.array(u64, 2)), ("pm_type", i32),
        ("eptp", u64)], define=pmap)
    ranges = w.array(L.ids["range"], 16)
    common = [("vm_id", uint32), ("vm_creator_pid", pid), ("vm_nmemranges", size_t),
              ("vm_memory_size", size_t), ("vm_memranges", ranges)]
    tail = [("vm_name", w.array(ch, 64)), ("vm_refcnt", u32), ("vm_vcpu_list", vcpu_head),
            ("vm_vcpu_ct", uint32), ("vm_vcpu_lock", rwlock), (n("vm_link"), vm_link)]
    if design == DESIGN_NEW:
        members = [(n("vm_pmap"), pmap_t), *common,
                   ("vm_memory_slot", w.array(w.ptr(uao), 16)), *tail]
    else:
        L.ids["vm_map"] = w.struct("struct vm_map", [("pmap", pmap_t), ("lock", rwlock),
                                                     ("size", size_t)])
        members = [("vm_vmspace", w.ptr(w.forward("struct vmspace"))),
                   (n("vm_map"), w.ptr(L.ids["vm_map"])), *common, *tail]
    L.ids["vm"] = w.struct("struct vm", members, define=vm)
    L.ids["vcpu"] = w.struct("struct vcpu", [
        ("vc_g_fpu", w.array(u64, 128)), ("vc_control_va", vaddr), ("vc_control_pa", paddr),
        ("vc_vlapic_va", vaddr), ("vc_vlapic_pa", paddr), ("vc_parent", w.ptr(vm)),
        ("vc_id", uint32), ("vc_vpid", u16), ("vc_state", u32), ("vc_vcpu_link", vcpu_link)],
        define=vcpu)
    L.ids["softc"] = w.struct("struct vmm_softc", [
        ("sc_dev", w.array(u64, 20)), ("sc_slock", rwlock), ("sc_refcnt", u32),
        ("sc_status", u32), ("sc_md", w.array(u32, 3)), ("vm_list", vm_head), ("mode", i32),
        ("vcpu_ct", size_t), ("vcpu_max", size_t), ("vm_lock", rwlock), ("vm_ct", size_t)])
    return L


@dataclass
class VmSpec:
    pa: int
    vm_id: int
    name: str
    pmap_pa: int
    root: int
    ranges: list[tuple[int, int, int, int]]          # gpa, va, size, type
    vcpus: list[tuple[int, int]]                     # (struct vcpu pa, VMCB/VMCS pa)
    map_pa: int = 0


def build(design: str, mode: int, vms: list[VmSpec], L: Layout | None = None,
          ncr3: dict[int, int] | None = None) -> tuple[DictMem, Ctf]:
    """Kernel memory holding vmm_softc and *vms*, linked newest first like vm_create."""
    L = L or kernel_types(design)
    mem = DictMem(size=MEM)
    softc_pa = 0x100000

    def put(addr: int, fmt: str, *vals: int) -> None:
        mem.write(addr, struct.pack(fmt, *vals))

    put(SOFTC_SYM - KERNBASE, "<Q", kva(softc_pa))
    put(softc_pa + L.off("softc", "mode"), "<i", mode)
    put(softc_pa + L.off("softc", "vm_list"), "<Q", kva(vms[0].pa) if vms else 0)
    for i, v in enumerate(vms):
        nxt = kva(vms[i + 1].pa) if i + 1 < len(vms) else 0
        put(v.pa + L.off("vm", "vm_link"), "<Q", nxt)
        put(v.pa + L.off("vm", "vm_id"), "<I", v.vm_id)
        put(v.pa + L.off("vm", "vm_creator_pid"), "<i", 4000 + v.vm_id)
        mem.write(v.pa + L.off("vm", "vm_name"), v.name.encode() + b"\0")
        put(v.pa + L.off("vm", "vm_nmemranges"), "<Q", len(v.ranges))
        for j, (gpa, va, size, typ) in enumerate(v.ranges):
            base = v.pa + L.off("vm", "vm_memranges") + j * L.size("range")
            put(base + L.off("range", "vmr_gpa"), "<Q", gpa)
            put(base + L.off("range", "vmr_va"), "<Q", va)
            put(base + L.off("range", "vmr_size"), "<Q", size)
            put(base + L.off("range", "vmr_type"), "<i", typ)
        if design == DESIGN_NEW:
            put(v.pa + L.off("vm", "vm_pmap"), "<Q", kva(v.pmap_pa))
            for j in range(len(v.ranges)):
                put(v.pa + L.off("vm", "vm_memory_slot") + 8 * j, "<Q", kva(0x900000 + j * 64))
        else:
            put(v.pa + L.off("vm", "vm_map"), "<Q", kva(v.map_pa))
            put(v.map_pa + L.off("vm_map", "pmap"), "<Q", kva(v.pmap_pa))
        put(v.pmap_pa + L.off("pmap", "pm_pdirpa"), "<Q", v.root)
        put(v.pmap_pa + L.off("pmap", "pm_type"), "<i", 2 if mode == 1 else 3)
        put(v.pmap_pa + L.off("pmap", "eptp"), "<Q", v.root | 0x1E if mode == 1 else 0)
        put(v.pa + L.off("vm", "vm_vcpu_list"), "<Q", kva(v.vcpus[0][0]) if v.vcpus else 0)
        for j, (vc_pa, control) in enumerate(v.vcpus):
            nxt = kva(v.vcpus[j + 1][0]) if j + 1 < len(v.vcpus) else 0
            put(vc_pa + L.off("vcpu", "vc_vcpu_link"), "<Q", nxt)
            put(vc_pa + L.off("vcpu", "vc_parent"), "<Q", kva(v.pa))
            put(vc_pa + L.off("vcpu", "vc_id"), "<I", j)
            put(vc_pa + L.off("vcpu", "vc_control_pa"), "<Q", control)
            put(vc_pa + L.off("vcpu", "vc_control_va"), "<Q", 0xFFFF800012345000)
            if mode == 2:                                       # a VMCB (AMD APM)
                put(control + 0x90, "<Q", 1)
                put(control + 0xB0, "<Q", (ncr3 or {}).get(control, v.root))
    return mem, Ctf.load(L.w.blob())


VM_A = VmSpec(0x200000, 2, "l2-b", 0x210000, 0x400000,
              [(0x0, 0x7f0000000000, 0xA0000, 0), (0xA0000, 0x7f00000a0000, 0x60000, 1),
               (0x100000, 0x7f0000100000, 0xFF00000, 0), (0xF0000000, 0, 0xFE00000, 2)],
              [(0x220000, 0x500000)])
VM_B = VmSpec(0x300000, 1, "l2-a", 0x310000, 0x600000,
              [(0x0, 0x7e0000000000, 0x10000, 0)], [(0x320000, 0x700000), (0x330000, 0x710000)],
              map_pa=0x340000)
VM_A.map_pa = 0x240000


def run(mem: DictMem, ctf: Ctf) -> list:
    return discover(DirectMapMem(mem), mem, {"vmm_softc": SOFTC_SYM}, ctf, mem_size=MEM)


def test_new_design_rvi() -> None:
    mem, ctf = build(DESIGN_NEW, 2, [VM_A, VM_B])
    a, b = run(mem, ctf)
    assert (a.vm, a.id, a.name, a.creator_pid) == (kva(VM_A.pa), 2, "l2-b", 4002)
    assert (a.design, a.format, a.root, a.eptp) == (DESIGN_NEW, "npt", 0x400000, None)
    assert a.pmap == kva(VM_A.pmap_pa)
    assert [(r.gpa, r.va, r.size, r.kind) for r in a.memranges] == \
        [(g, v, s, {0: "ram", 1: "reserved", 2: "mmio"}[t]) for g, v, s, t in VM_A.ranges]
    assert a.memory_slots == tuple(kva(0x900000 + j * 64) for j in range(4))
    assert [(c.id, c.control_pa, c.ncr3) for c in a.vcpus] == [(0, 0x500000, 0x400000)]
    assert [(c.id, c.control_pa) for c in b.vcpus] == [(0, 0x700000), (1, 0x710000)]
    assert b.root == 0x600000
    assert a.checks == {"pm_type matches vmm mode": True, "vmcb nCR3 == pm_pdirpa": True}


def test_old_design_ept() -> None:
    mem, ctf = build(DESIGN_OLD, 1, [VM_A, VM_B])
    a, b = run(mem, ctf)
    assert (a.design, a.format, a.root, a.eptp) == (DESIGN_OLD, "ept", 0x400000, 0x40001E)
    assert a.pmap == kva(VM_A.pmap_pa) and a.memory_slots == ()
    assert b.eptp == 0x60001E and [c.ncr3 for c in b.vcpus] == [None, None]
    assert "eptp == pm_pdirpa | walk 4 | memtype" in a.checks


def test_old_design_rvi_and_new_design_ept_are_told_by_member_names() -> None:
    for design, mode in ((DESIGN_OLD, 2), (DESIGN_NEW, 1)):
        mem, ctf = build(design, mode, [VM_B])
        (vm,) = run(mem, ctf)
        assert (vm.design, vm.root) == (design, 0x600000)


def test_no_vms() -> None:
    mem, ctf = build(DESIGN_NEW, 2, [])
    assert run(mem, ctf) == []


def test_renamed_member_is_named_in_the_error() -> None:
    for old, design in (("vm_link", DESIGN_NEW), ("pm_pdirpa", DESIGN_OLD)):
        L = kernel_types(design, {old: old + "_x"})
        mem, ctf = build(design, 2, [VM_A], L=kernel_types(design))
        ctf = Ctf.load(L.w.blob())
        with pytest.raises(InfraError, match=f"has no member '{old}'"):
            run(mem, ctf)


def test_neither_design_names_both_members() -> None:
    L = kernel_types(DESIGN_NEW, {"vm_pmap": "vm_nested"})
    mem, _ctf = build(DESIGN_NEW, 2, [VM_A])
    with pytest.raises(InfraError, match=r"neither member 'vm_pmap'.*nor 'vm_map'.*vm_nested"):
        run(mem, Ctf.load(L.w.blob()))


def test_ncr3_disagreeing_with_pm_pdirpa_is_an_error() -> None:
    mem, ctf = build(DESIGN_NEW, 2, [VM_A, VM_B], ncr3={0x710000: 0x666000})
    with pytest.raises(InfraError, match=r"vcpu 1: VMCB nCR3 0x666000 != pm_pdirpa 0x600000"):
        run(mem, ctf)


def test_nested_paging_off_and_bad_eptp_are_errors() -> None:
    mem, ctf = build(DESIGN_NEW, 2, [VM_B])
    mem.write(0x700000 + 0x90, bytes(8))
    with pytest.raises(InfraError, match="nested paging off"):
        run(mem, ctf)
    mem, ctf = build(DESIGN_NEW, 1, [VM_B])
    L = kernel_types(DESIGN_NEW)
    mem.write(VM_B.pmap_pa + L.off("pmap", "eptp"), struct.pack("<Q", 0x600000 | 0x5E))
    assert run(mem, ctf)[0].eptp == 0x60005E     # A/D enabled (bit 6): the old code's EPTP
    mem.write(VM_B.pmap_pa + L.off("pmap", "eptp"), struct.pack("<Q", 0x600000 | 0x16))
    with pytest.raises(InfraError, match="eptp 0x600016 does not name pm_pdirpa"):
        run(mem, ctf)   # a 3-level walk


def test_corrupt_lists_and_values_are_errors() -> None:
    L = kernel_types(DESIGN_NEW)
    mem, ctf = build(DESIGN_NEW, 2, [VM_A, VM_B], L=L)
    mem.write(VM_B.pa + L.off("vm", "vm_link"), struct.pack("<Q", kva(VM_A.pa)))  # a loop
    with pytest.raises(InfraError, match="seen twice"):
        run(mem, ctf)
    mem, ctf = build(DESIGN_NEW, 2, [VM_A], L=L)
    mem.write(VM_A.pa + L.off("vm", "vm_nmemranges"), struct.pack("<Q", 17))
    with pytest.raises(InfraError, match="vm_nmemranges 17"):
        run(mem, ctf)
    mem, ctf = build(DESIGN_NEW, 2, [VM_A], L=L)
    mem.write(0x220000 + L.off("vcpu", "vc_parent"), struct.pack("<Q", kva(0x123000)))
    with pytest.raises(InfraError, match="vc_parent"):
        run(mem, ctf)
    mem, ctf = build(DESIGN_NEW, 2, [VM_A], L=L)
    mem.write(VM_A.pmap_pa + L.off("pmap", "pm_type"), struct.pack("<i", 1))
    with pytest.raises(InfraError, match="pm_type 1"):
        run(mem, ctf)
    mem, ctf = build(DESIGN_NEW, 2, [VM_A], L=L)
    mem.write(VM_A.pmap_pa + L.off("pmap", "pm_pdirpa"), struct.pack("<Q", 0x400123))
    with pytest.raises(InfraError, match="pm_pdirpa 0x400123"):
        run(mem, ctf)


def test_vmm_not_attached_and_unknown_mode() -> None:
    mem, ctf = build(DESIGN_NEW, 2, [VM_A])
    mem.write(SOFTC_SYM - KERNBASE, bytes(8))
    with pytest.raises(InfraError, match="vmm_softc is NULL"):
        run(mem, ctf)
    mem, ctf = build(DESIGN_NEW, 0, [VM_A])
    with pytest.raises(InfraError, match="mode 0"):
        run(mem, ctf)


def test_direct_map_translation() -> None:
    mem = DictMem(size=MEM)
    mem.write(0x5008, b"slat")
    d = DirectMapMem(mem)
    assert d.read(PMAP_DIRECT_BASE + 0x5008, 4) == b"slat"
    assert d.read(KERNBASE + 0x5008, 4) == b"slat"
    with pytest.raises(MemoryReadError, match="outside OpenBSD's direct map"):
        d.read(0xFFFF800000005000, 4)               # a km_alloc'd address, not direct
    with pytest.raises(MemoryReadError):
        d.read(PMAP_DIRECT_BASE + MEM, 8)           # beyond RAM
