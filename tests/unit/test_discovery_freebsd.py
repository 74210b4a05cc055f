"""FreeBSD bhyve discovery on constructed L1 memory, laid out by CTF fixtures.

The struct layouts come from the independent CTF writer (tests/unit/ctf_writer.py),
in CTF version 3 as FreeBSD 14 writes it: the kernel's container (devfs, pmap,
vmspace) and vmm.ko's as a child of it (vmmdev_softc, struct vm, the SVM and VMX
softcs).  The fixture writes kernel memory at the writer's offsets; discovery reads
it back through harness.ctf; the two only meet in the bytes.  Structures live in
the direct map, except ``struct vm`` and the svm/vmx softcs, which sit in
kernel_map (read through the CPU's translation, a page map here).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from ctf_writer import CtfWriter

from harness.ctf import Ctf
from harness.discovery.freebsd_bhyve import (
    DMAP_MIN_ADDRESS,
    PMAP_EMULATE_AD_BITS,
    PMAP_NO_CR3,
    PMAP_PDE_SUPERPAGE,
    PT_EPT,
    PT_RVI,
    FreeBsdKernelMem,
    LiveVM,
    discover,
)
from harness.errors import InfraError, MemoryReadError
from harness.mem import PAGE_SIZE, DictMem

MEM = 64 << 20
KMAP = 0xFFFF_FE00_0000_0000          # kernel_map addresses (not the direct map)
CDEVP_LIST = 0xFFFF_FFFF_8123_4560    # &cdevp_list in the kernel's data


def dmap(pa: int) -> int:
    return DMAP_MIN_ADDRESS + pa


class PageMapMem:
    """Kernel virtual reads through a page map (what the CPU's tables give a live run)."""

    def __init__(self, phys: DictMem, pages: dict[int, int]) -> None:
        self.phys = phys
        self.pages = pages

    def read(self, addr: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            va = addr + len(out)
            pa = self.pages.get(va & ~(PAGE_SIZE - 1))
            if pa is None:
                raise MemoryReadError(va, size, "virtual address not mapped")
            n = min(size - len(out), PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out += self.phys.read(pa + (va & (PAGE_SIZE - 1)), n)
        return bytes(out)


@dataclass
class Types:
    """The two containers and the writer ids of the structs the fixture fills."""

    kernel: CtfWriter
    vmm: CtfWriter
    ids: dict[str, tuple[CtfWriter, int]] = field(default_factory=dict)

    def off(self, name: str, member: str) -> int:
        w, tid = self.ids[name]
        return w.layout_of(tid)[member]

    def size(self, name: str) -> int:
        w, tid = self.ids[name]
        return w.size_of(tid)

    def ctf(self) -> Ctf:
        return Ctf.load(self.vmm.blob(), flavour="freebsd", parent=self.kernel.blob())


def freebsd_types(release: int = 14) -> Types:
    """The kernel's and vmm.ko's types, as 14.x (vm->vmspace) or 15.x (vm->mem) declare
    them (FreeBSD 14: sys/amd64/vmm/vmm.c, vmm_dev.c, amd/svm_softc.h, intel/vmx.h)."""
    k = CtfWriter("freebsd", version=3)
    T = Types(k, CtfWriter("freebsd", parent_name="kernel", parent=k, version=3))
    u64, u32, u16 = k.int_("unsigned long", 8), k.int_("unsigned int", 4), \
        k.int_("unsigned short", 2)
    i32, ch, b = k.int_("int", 4, signed=True), k.int_("char", 1, signed=True), \
        k.int_("_Bool", 1)
    vaddr = k.typedef("vm_offset_t", u64)
    paddr = k.typedef("vm_paddr_t", u64)
    cdev = k.declare("struct cdev")
    priv = k.declare("struct cdev_priv")
    T.ids["cdev"] = (k, k.struct("struct cdev", [
        ("si_mountpt", k.ptr(0)), ("si_flags", u32), ("si_drv0", i32), ("si_drv1", k.ptr(0)),
        ("si_drv2", k.ptr(0)), ("si_name", k.array(ch, 256))], define=cdev))
    tqe = k.struct("", [("tqe_next", k.ptr(priv)), ("tqe_prev", k.ptr(k.ptr(priv)))])
    T.ids["cdev_priv"] = (k, k.struct("struct cdev_priv", [
        ("cdp_c", cdev), ("cdp_list", tqe), ("cdp_inode", u32), ("cdp_flags", u32)],
        define=priv))
    ptype = k.enum("enum pmap_type", [("PT_X86", 0), ("PT_EPT", 1), ("PT_RVI", 2)])
    T.ids["pmap"] = (k, k.struct("struct pmap", [
        ("pm_mtx", k.array(u64, 4)), ("pm_pmltop", k.ptr(u64)), ("pm_pmltopu", k.ptr(u64)),
        ("pm_cr3", u64), ("pm_ucr3", u64), ("pm_pvchunk", k.array(u64, 2)),
        ("pm_active", k.array(u64, 4)), ("pm_type", ptype), ("pm_stats", k.array(u64, 2)),
        ("pm_eptgen", u64), ("pm_flags", i32)]))
    T.ids["vmspace"] = (k, k.struct("struct vmspace", [
        ("vm_map", k.array(u64, 40)), ("vm_shm", k.ptr(0)), ("vm_refcnt", u32),
        ("vm_pmap", T.ids["pmap"][1])]))
    proc = k.declare("struct proc")
    T.ids["proclist"] = (k, k.struct("struct proclist", [("lh_first", k.ptr(proc))]))
    T.ids["proc"] = (k, k.struct("struct proc", [
        ("p_list", k.struct("", [("le_next", k.ptr(proc)), ("le_prev", k.ptr(k.ptr(proc)))])),
        ("p_threads", k.array(u64, 2)), ("p_slock", k.array(u64, 4)), ("p_ucred", k.ptr(0)),
        ("p_vmspace", k.ptr(T.ids["vmspace"][1])), ("p_pad", k.array(u64, 9)),
        ("p_pid", k.typedef("pid_t", i32))], define=proc))
    k.forward("struct vm_object")
    _vmm_types(T, release, u64, u32, u16, i32, ch, b, vaddr, paddr)
    return T


def _vmm_types(T: Types, release: int, u64: int, u32: int, u16: int, i32: int, ch: int,
               b: int, vaddr: int, paddr: int) -> None:
    """vmm.ko's container: a child of the kernel's (its ids from 0x80000001)."""
    w = T.vmm
    vm = w.declare("struct vm")
    softc = w.declare("struct vmmdev_softc")
    devmem = w.declare("struct devmem_softc")
    vcpu = w.declare("struct vcpu")
    obj = w.ptr(w.forward("struct vm_object"))
    T.ids["devmem"] = (w, w.struct("struct devmem_softc", [
        ("segid", i32), ("name", w.ptr(ch)), ("cdev", w.ptr(T.ids["cdev"][1])),
        ("sc", w.ptr(softc)), ("link", w.struct("", [("sle_next", w.ptr(devmem))]))],
        define=devmem))
    T.ids["softc"] = (w, w.struct("struct vmmdev_softc", [
        ("vm", w.ptr(vm)), ("cdev", w.ptr(T.ids["cdev"][1])), ("ucred", w.ptr(0)),
        ("link", w.struct("", [("sle_next", w.ptr(softc))])),
        ("devmem", w.struct("", [("slh_first", w.ptr(devmem))])), ("flags", i32)],
        define=softc))
    names = ("struct mem_map", "struct mem_seg") if release == 14 else \
        ("struct vm_mem_map", "struct vm_mem_seg")
    T.ids["map"] = (w, w.struct(names[0], [("gpa", paddr), ("len", u64), ("segoff", u64),
                                           ("segid", i32), ("prot", i32), ("flags", i32)]))
    T.ids["seg"] = (w, w.struct(names[1], [("len", u64), ("sysmem", b), ("object", obj)]))
    maps = w.array(T.ids["map"][1], 8)
    segs = w.array(T.ids["seg"][1], 4)
    vmspace = w.ptr(T.ids["vmspace"][1])
    head = [("cookie", w.ptr(0)), ("iommu", w.ptr(0)), ("vhpet", w.array(u64, 6)),
            ("active_cpus", w.array(u64, 4)), ("suspend", i32)]
    tail = [("name", w.array(ch, 32)), ("vcpu", w.ptr(w.ptr(vcpu))), ("sockets", u16),
            ("cores", u16), ("threads", u16), ("maxcpus", u16)]
    if release == 14:
        members = [*head, ("mem_maps", maps), ("mem_segs", segs), ("vmspace", vmspace), *tail]
    else:
        T.ids["vm_mem"] = (w, w.struct("struct vm_mem", [
            ("mem_maps", maps), ("mem_segs", segs), ("mem_segs_lock", w.array(u64, 4)),
            ("mem_vmspace", vmspace)]))
        members = [*head, ("mem", T.ids["vm_mem"][1]), *tail]
    T.ids["vm"] = (w, w.struct("struct vm", members, define=vm))
    T.ids["vcpu"] = (w, w.struct("struct vcpu", [
        ("flags", i32), ("state", i32), ("mtx", w.array(u64, 4)), ("hostcpu", i32),
        ("vcpuid", i32), ("vm", w.ptr(vm)), ("cookie", w.ptr(0))], define=vcpu))
    T.ids["svm_softc"] = (w, w.struct("struct svm_softc", [
        ("nptp", paddr), ("iopm_bitmap", w.ptr(u64)), ("msr_bitmap", w.ptr(u64)),
        ("vm", w.ptr(vm))]))
    T.ids["svm_vcpu"] = (w, w.struct("struct svm_vcpu", [
        ("sc", w.ptr(T.ids["svm_softc"][1])), ("vcpu", w.ptr(vcpu)), ("vmcb", w.ptr(0)),
        ("swctx", w.array(u64, 20)), ("vmcb_pa", u64), ("nextrip", u64)]))
    T.ids["vmx"] = (w, w.struct("struct vmx", [
        ("vm", w.ptr(vm)), ("msr_bitmap", w.ptr(ch)), ("eptp", u64),
        ("eptgen", w.array(u64, 256)), ("pmap", w.ptr(T.ids["pmap"][1]))]))


@dataclass
class VmSpec:
    """One VM to lay out in memory."""

    name: str
    base: int                               # physical base of its structures
    backend: str = "svm"
    root: int = 0
    maps: list[tuple[int, int, int, int, int]] = field(default_factory=list)  # gpa len off seg prot
    segs: list[tuple[int, int, bool]] = field(default_factory=list)           # segid len sysmem
    devmem: dict[int, str] = field(default_factory=dict)
    vcpus: int = 1
    pm_flags: int = 0
    eptp_low: int = 0x1E                    # walk 4 | WB
    ncr3: int | None = None                 # a VMCB nCR3 other than the root


SVM_VM = VmSpec("slat-7-0-0", 0x400000, "svm", 0x600000,
                maps=[(0, 0x200000, 0, 0, 7)], segs=[(0, 0x200000, True)])
ROM_VM = VmSpec("guest", 0x800000, "svm", 0xA00000,
                maps=[(0, 0x8000000, 0, 0, 7), (0xFF000000, 0x1000000, 0, 1, 5)],
                segs=[(0, 0x8000000, True), (1, 0x1000000, False)], devmem={1: "bootrom"},
                vcpus=2)


@dataclass
class World:
    """Constructed L1 memory and the readers discovery gets."""

    T: Types
    phys: DictMem
    pages: dict[int, int]

    def kmem(self) -> FreeBsdKernelMem:
        return FreeBsdKernelMem(self.phys, PageMapMem(self.phys, self.pages))

    def put(self, pa: int, fmt: str, *vals: int) -> None:
        self.phys.write(pa, struct.pack(fmt, *vals))


def build(vms: list[VmSpec], release: int = 14, T: Types | None = None,
          others: tuple[str, ...] = ("null", "vmm.io/x.bootrom"),
          inactive: tuple[str, ...] = ()) -> World:
    """The cdev list (with unrelated and inactive devices) and every VM's structures."""
    T = T or freebsd_types(release)
    W = World(T, DictMem(size=MEM), {})
    W.pages[CDEVP_LIST & ~0xFFF] = 0x1000
    cdevs = [(n, True) for n in others] + [(f"vmm/{n}", False) for n in inactive]
    cdevs += [(f"vmm/{v.name}", True) for v in vms]
    privs = [0x20000 + 0x1000 * i for i in range(len(cdevs))]
    W.put(0x1000 + (CDEVP_LIST & 0xFFF), "<Q", dmap(privs[0]) if privs else 0)
    for i, ((name, active), pa) in enumerate(zip(cdevs, privs, strict=True)):
        nxt = dmap(privs[i + 1]) if i + 1 < len(privs) else 0
        W.put(pa + T.off("cdev_priv", "cdp_list"), "<Q", nxt)
        cdev = pa + T.off("cdev_priv", "cdp_c")
        W.phys.write(cdev + T.off("cdev", "si_name"), name.encode() + b"\0")
        W.put(pa + T.off("cdev_priv", "cdp_flags"), "<I", 1 if active else 0)
    for v, pa in zip(vms, privs[len(cdevs) - len(vms):], strict=True):
        _vm(W, v, dmap(pa + T.off("cdev_priv", "cdp_c")), release)
    return W


def _vm(W: World, v: VmSpec, cdev: int, release: int) -> None:
    """One VM: softc in the direct map, struct vm and the backend softc in kernel_map."""
    T, b = W.T, v.base
    softc, vm_pa, vmspace, cookie_pa = b, b + 0x1000, b + 0x3000, b + 0x5000
    vm_kva, cookie_kva = KMAP + b + 0x1000, KMAP + b + 0x5000
    for off in range(0, 0x2000, PAGE_SIZE):
        W.pages[vm_kva + off] = vm_pa + off
    W.pages[cookie_kva] = cookie_pa
    W.put(cdev - DMAP_MIN_ADDRESS + T.off("cdev", "si_drv1"), "<Q", dmap(softc))
    W.put(softc + T.off("softc", "cdev"), "<Q", cdev)
    W.put(softc + T.off("softc", "vm"), "<Q", vm_kva)
    W.phys.write(vm_pa + T.off("vm", "name"), v.name.encode() + b"\0")
    W.put(vm_pa + T.off("vm", "cookie"), "<Q", cookie_kva)
    mem = T.off("vm", "mem") if release == 15 else 0
    vs_off = mem + T.off("vm_mem", "mem_vmspace") if release == 15 else T.off("vm", "vmspace")
    W.put(vm_pa + vs_off, "<Q", dmap(vmspace))
    maps = mem + (T.off("vm_mem", "mem_maps") if release == 15 else T.off("vm", "mem_maps"))
    segs = mem + (T.off("vm_mem", "mem_segs") if release == 15 else T.off("vm", "mem_segs"))
    for i, (gpa, length, segoff, segid, prot) in enumerate(v.maps):
        at = vm_pa + maps + i * T.size("map")
        for member, fmt, val in (("gpa", "<Q", gpa), ("len", "<Q", length),
                                 ("segoff", "<Q", segoff), ("segid", "<i", segid),
                                 ("prot", "<i", prot)):
            W.put(at + T.off("map", member), fmt, val)
    for segid, length, sysmem in v.segs:
        at = vm_pa + segs + segid * T.size("seg")
        W.put(at + T.off("seg", "len"), "<Q", length)
        W.put(at + T.off("seg", "sysmem"), "<B", int(sysmem))
        W.put(at + T.off("seg", "object"), "<Q", dmap(b + 0x9000 + 0x100 * segid))
    _devmem(W, v, softc)
    _pmap(W, v, vmspace + T.off("vmspace", "vm_pmap"))
    _backend(W, v, vm_kva, cookie_pa, dmap(vmspace + T.off("vmspace", "vm_pmap")))
    _vcpus(W, v, vm_pa, cookie_kva)


def _devmem(W: World, v: VmSpec, softc: int) -> None:
    T, node = W.T, v.base + 0x7000
    W.put(softc + T.off("softc", "devmem"), "<Q", dmap(node) if v.devmem else 0)
    for i, (segid, name) in enumerate(sorted(v.devmem.items())):
        at = node + 0x100 * i
        W.put(at + T.off("devmem", "segid"), "<i", segid)
        W.put(at + T.off("devmem", "name"), "<Q", dmap(at + 0x80))
        W.phys.write(at + 0x80, name.encode() + b"\0")
        last = i + 1 == len(v.devmem)
        W.put(at + T.off("devmem", "link"), "<Q", 0 if last else dmap(at + 0x100))


def _pmap(W: World, v: VmSpec, pmap: int) -> None:
    T = W.T
    W.put(pmap + T.off("pmap", "pm_pmltop"), "<Q", dmap(v.root))
    W.put(pmap + T.off("pmap", "pm_cr3"), "<Q", PMAP_NO_CR3)
    W.put(pmap + T.off("pmap", "pm_type"), "<i", PT_RVI if v.backend == "svm" else PT_EPT)
    W.put(pmap + T.off("pmap", "pm_flags"), "<i", v.pm_flags)


def _backend(W: World, v: VmSpec, vm_kva: int, cookie_pa: int, pmap: int) -> None:
    T = W.T
    if v.backend == "svm":
        W.put(cookie_pa + T.off("svm_softc", "nptp"), "<Q", v.root)
        W.put(cookie_pa + T.off("svm_softc", "vm"), "<Q", vm_kva)
    else:
        W.put(cookie_pa + T.off("vmx", "vm"), "<Q", vm_kva)
        W.put(cookie_pa + T.off("vmx", "eptp"), "<Q", v.root | v.eptp_low)
        W.put(cookie_pa + T.off("vmx", "pmap"), "<Q", pmap)


def _vcpus(W: World, v: VmSpec, vm_pa: int, cookie_kva: int) -> None:
    """vm->vcpu[maxcpus]: vCPUs 0.. created, the last slot NULL (not created yet)."""
    T, array = W.T, v.base + 0xB000
    W.put(vm_pa + T.off("vm", "vcpu"), "<Q", dmap(array))
    W.put(vm_pa + T.off("vm", "maxcpus"), "<H", v.vcpus + 1)
    for i in range(v.vcpus):
        vcpu, cookie, vmcb = v.base + 0xC000 + 0x200 * i, v.base + 0xD000 + 0x200 * i, \
            v.base + 0x10000 + PAGE_SIZE * i
        W.put(array + 8 * i, "<Q", dmap(vcpu))
        W.put(vcpu + T.off("vcpu", "cookie"), "<Q", dmap(cookie))
        if v.backend == "svm":
            W.put(cookie + T.off("svm_vcpu", "vmcb_pa"), "<Q", vmcb)
            W.put(vmcb + 0x90, "<Q", 1)
            W.put(vmcb + 0xB0, "<Q", v.ncr3 if v.ncr3 is not None and i else v.root)


def run(W: World) -> list[LiveVM]:
    return discover(W.kmem(), W.phys, {"cdevp_list": CDEVP_LIST}, W.T.ctf(), mem_size=MEM)


def test_svm_vms_with_sysmem_and_a_boot_rom() -> None:
    a, b = run(build([SVM_VM, ROM_VM]))
    assert (a.name, a.backend, a.format, a.root, a.eptp) == ("slat-7-0-0", "svm", "npt",
                                                            0x600000, None)
    assert a.vm == KMAP + SVM_VM.base + 0x1000 and a.softc == dmap(SVM_VM.base)
    assert [(m.gpa, m.len, m.kind, m.prot_str) for m in a.maps] == [(0, 0x200000, "ram", "rwx")]
    assert [(m.gpa, m.len, m.kind, m.prot_str, m.seg_name) for m in b.maps] == [
        (0, 0x8000000, "ram", "rwx", ""), (0xFF000000, 0x1000000, "rom", "rx", "bootrom")]
    assert [(s.segid, s.sysmem, s.name) for s in b.segs] == [(0, True, ""), (1, False, "bootrom")]
    assert [(c.id, c.vmcb_pa, c.ncr3) for c in b.vcpus] == [
        (0, ROM_VM.base + 0x10000, 0xA00000), (1, ROM_VM.base + 0x11000, 0xA00000)]
    assert a.checks == {"vm->name == /dev/vmm/<name>": True,
                        "svm_softc.nptp == vtophys(pm_pmltop)": True,
                        "vmcb nCR3 == nptp": True}


def test_vmx_with_emulated_and_with_hardware_ad_bits() -> None:
    emul = VmSpec("e", 0x400000, "vmx", 0x600000, maps=[(0, 0x100000, 0, 0, 7)],
                  segs=[(0, 0x100000, True)], pm_flags=PMAP_EMULATE_AD_BITS | PMAP_PDE_SUPERPAGE)
    hw = VmSpec("h", 0x800000, "vmx", 0xA00000, maps=[(0, 0x100000, 0, 0, 7)],
                segs=[(0, 0x100000, True)], eptp_low=0x5E)
    e, h = run(build([emul, hw]))
    assert (e.format, e.root, e.eptp, e.emulate_ad, e.superpages, e.ad_enabled) == \
        ("ept", 0x600000, 0x60001E, True, True, False)
    assert (h.eptp, h.emulate_ad, h.superpages, h.ad_enabled) == (0xA0005E, False, False, True)
    assert [c.vmcb_pa for c in e.vcpus] == [None]
    assert "vmx.eptp == EPTP(vtophys(pm_pmltop))" in e.checks


def test_freebsd_15_layout_is_told_by_member_names() -> None:
    (vm,) = run(build([ROM_VM], release=15))
    assert vm.root == 0xA00000 and [m.kind for m in vm.maps] == ["ram", "rom"]


def test_unrelated_and_inactive_devices_are_skipped() -> None:
    W = build([SVM_VM], others=("null", "vmm.io/slat-7-0-0.bootrom", "vmmctl"),
              inactive=("dying",))
    assert [v.name for v in run(W)] == ["slat-7-0-0"]
    assert run(build([])) == []


def test_disagreeing_roots_are_errors() -> None:
    W = build([SVM_VM])
    W.put(SVM_VM.base + 0x5000 + W.T.off("svm_softc", "nptp"), "<Q", 0x666000)
    with pytest.raises(InfraError, match=r"nptp 0x666000 != vtophys\(pm_pmltop\) 0x600000"):
        run(W)
    bad = VmSpec(**{**ROM_VM.__dict__, "ncr3": 0x777000})
    with pytest.raises(InfraError, match="vcpu 1: VMCB nCR3 0x777000 != nptp 0xa00000"):
        run(build([bad]))
    W = build([SVM_VM])
    W.put(SVM_VM.base + 0x10000 + 0x90, "<Q", 0)
    with pytest.raises(InfraError, match="nested paging off"):
        run(W)
    for low, why in ((0x16, "4-level walk"), (0x18, "4-level walk")):
        vmx = VmSpec("v", 0x400000, "vmx", 0x600000, eptp_low=low)
        with pytest.raises(InfraError, match=why):
            run(build([vmx]))
    both = VmSpec("v", 0x400000, "vmx", 0x600000, eptp_low=0x5E, pm_flags=PMAP_EMULATE_AD_BITS)
    with pytest.raises(InfraError, match="enables hardware A/D bits, but the pmap emulates"):
        run(build([both]))


def test_corrupt_structures_are_errors() -> None:
    T = freebsd_types()
    W = build([SVM_VM], T=T)
    pmap = SVM_VM.base + 0x3000 + T.off("vmspace", "vm_pmap")
    W.put(pmap + T.off("pmap", "pm_type"), "<i", 0)
    with pytest.raises(InfraError, match="pm_type 0, neither PT_EPT"):
        run(W)
    W = build([SVM_VM], T=T)
    W.put(pmap + T.off("pmap", "pm_pmltop"), "<Q", KMAP + 0x600000)
    with pytest.raises(InfraError, match="not a direct-map address"):
        run(W)
    W = build([SVM_VM], T=T)
    W.put(pmap + T.off("pmap", "pm_cr3"), "<Q", 0x123000)
    with pytest.raises(InfraError, match="pm_cr3 0x123000 is neither"):
        run(W)
    W = build([SVM_VM], T=T)
    W.phys.write(SVM_VM.base + 0x1000 + T.off("vm", "name"), b"other\0")
    with pytest.raises(InfraError, match="vm->name is 'other'"):
        run(W)
    W = build([SVM_VM], T=T)
    W.put(SVM_VM.base + 0x5000 + T.off("svm_softc", "vm"), "<Q", KMAP)
    with pytest.raises(InfraError, match="not this VM's svm_softc"):
        run(W)


def test_a_loop_in_the_cdev_list_and_a_null_softc_are_errors() -> None:
    T = freebsd_types()
    W = build([SVM_VM], T=T)
    first = 0x20000
    W.put(0x22000 + T.off("cdev_priv", "cdp_list"), "<Q", dmap(first))     # last -> first
    with pytest.raises(InfraError, match="seen twice"):
        run(W)
    W = build([SVM_VM], T=T)
    W.put(0x22000 + T.off("cdev_priv", "cdp_c") + T.off("cdev", "si_drv1"), "<Q", 0)
    with pytest.raises(InfraError, match="si_drv1 is NULL"):
        run(W)


def test_missing_vmm_types_are_named() -> None:
    """Without vmm.ko's CTF (the kernel's alone), struct vm cannot be found."""
    W = build([SVM_VM])
    with pytest.raises(InfraError, match="struct vmmdev_softc"):
        discover(W.kmem(), W.phys, {"cdevp_list": CDEVP_LIST},
                 Ctf.load(W.T.kernel.blob(), flavour="freebsd"), mem_size=MEM)


def test_direct_map_translation() -> None:
    phys = DictMem(size=MEM)
    phys.write(0x5008, b"slat")
    k = FreeBsdKernelMem(phys, PageMapMem(phys, {KMAP: 0x5000}))
    assert k.read(dmap(0x5008), 4) == k.read(KMAP + 8, 4) == b"slat"
    with pytest.raises(MemoryReadError, match="not mapped"):
        k.read(KMAP + 0x1000, 4)
    with pytest.raises(MemoryReadError, match="not in FreeBSD's direct map"):
        FreeBsdKernelMem.dmap_to_pa(KMAP)
