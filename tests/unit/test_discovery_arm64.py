"""linux_kvm_arm64.discover() on a constructed arm64 L1, and vm_list found from code.

The layouts (Debian 6.1's, read from its BTF, and a shuffled one) become BTF
through the test encoder and memory through test_discovery_svm's own offset
resolver, so the code under test meets layouts it has never seen.  The
stage-2 tables themselves are built here and walked with FORMATS["stage2"].
"""

from __future__ import annotations

import pytest
from test_btf import BtfBuilder
from test_discovery_svm import PRIM, SIGNED, Image, Layout

from harness.btf import Btf, Kind
from harness.discovery.linux_kvm_arm64 import (
    adrp_targets,
    discover,
    find_vm_list,
    lm_to_phys,
)
from harness.errors import InfraError
from harness.formats import FORMATS
from harness.formats.stage2 import Stage2Params
from harness.mem import DictMem

MEMSTART = 0x40000000                 # virt machine: RAM at 1 GiB
LM = 0xFFFF000000000000               # PAGE_OFFSET, 48-bit VA
VM_LIST = 0xFFFF800009E0E6A0
MEM_END = MEMSTART + (256 << 20)
VTCR40 = 0x802D3558                   # read on the live L1: T0SZ 24, SL0 1
VTCR48 = 0x802D3590                   # T0SZ 16, SL0 2


def debian61() -> Layout:
    """Offsets read from linux-image-6.1.0-56-arm64's BTF."""
    return {
        "list_head": (16, {"next": (0, "ptr"), "prev": (8, "ptr")}),
        "rb_node": (24, {"__rb_parent_color": (0, "u64"), "rb_right": (8, "ptr"),
                         "rb_left": (16, "ptr")}),
        "rb_root": (8, {"rb_node": (0, "ptr")}),
        "atomic64_t": (8, {"counter": (0, "u64")}),
        "kvm_vmid": (8, {"id": (0, "atomic64_t")}),
        "kvm_s2_mmu": (0x28, {"vmid": (0, "kvm_vmid"), "pgd_phys": (8, "u64"),
                              "pgt": (0x10, "ptr"), "arch": (0x20, "ptr")}),
        "kvm_arch": (0x100, {"mmu": (0, "kvm_s2_mmu"), "vtcr": (0x28, "u64")}),
        "kvm_pgtable": (0x30, {"ia_bits": (0, "u32"), "start_level": (4, "u32"),
                               "pgd": (8, "ptr"), "mm_ops": (0x10, "ptr"),
                               "mmu": (0x18, "ptr")}),
        "kvm_memslots": (0x430, {"generation": (0, "u64"), "gfn_tree": (0x20, "rb_root"),
                                 "node_idx": (0x428, "int")}),
        "kvm_memory_slot": (0x108, {"gfn_node": (0x80, "rb_node[2]"), "base_gfn": (0xb0, "u64"),
                                    "npages": (0xb8, "u64"), "userspace_addr": (0xf8, "u64"),
                                    "flags": (0x100, "u32"), "id": (0x104, "short")}),
        "kvm": (0x1400, {"memslots": (0x8b8, "ptr[2]"), "vm_list": (0x910, "list_head"),
                         "arch": (0x9c8, "kvm_arch"), "userspace_pid": (0xf80, "pid_t")}),
    }


def shuffled() -> Layout:
    """Same members, other offsets; ``vtcr`` in kvm_s2_mmu as in later kernels."""
    lay = debian61()
    lay["kvm_s2_mmu"] = (0x40, {"arch": (0, "ptr"), "pgt": (8, "ptr"), "vtcr": (0x10, "u64"),
                                "pgd_phys": (0x18, "u64"), "vmid": (0x30, "kvm_vmid")})
    lay["kvm_arch"] = (0x100, {"mmu": (0x40, "kvm_s2_mmu")})
    lay["kvm_pgtable"] = (0x30, {"mmu": (0, "ptr"), "pgd": (8, "ptr"), "ia_bits": (0x10, "u32"),
                                 "start_level": (0x14, "u32")})
    lay["kvm"] = (0x2000, {"userspace_pid": (0x10, "pid_t"), "arch": (0x100, "kvm_arch"),
                           "vm_list": (0x800, "list_head"), "memslots": (0x1000, "ptr[2]")})
    return lay


def build_btf(lay: Layout) -> Btf:
    """One vmlinux BTF holding every struct of *lay* (KVM is built in on arm64)."""
    b = BtfBuilder()
    prim = {n: b.int_(n, s, n in SIGNED) for n, s in PRIM.items() if n not in ("ptr", "pid_t")}
    prim["ptr"] = b.ptr(0)
    prim["pid_t"] = b.ref(Kind.TYPEDEF, prim["int"], "pid_t")
    ids: dict[str, int] = {}
    for name, (size, members) in lay.items():
        enc = [(m, _tid(b, t, prim, ids), off * 8) for m, (off, t) in members.items()]
        ids[name] = b.struct(name, size, enc)
    return Btf.load(b.encode())


def _tid(b: BtfBuilder, t: str, prim: dict[str, int], ids: dict[str, int]) -> int:
    if "[" in t:
        elem, n = t[:-1].split("[")
        return b.array(_tid(b, elem, prim, ids), int(n), prim["u32"])
    return prim.get(t) or ids[t]


# name -> kvm (vmalloc), pid, pgt, pgd_phys, vtcr, ia_bits, start_level, vmid, slots
VMS = {
    "A": (0xFFFF800008040000, 91, 0xFFFF0000080A0080, 0x431A0000, VTCR40, 40, 1, 0x10001,
          [(0, 0x0, 0x10000, 0xFFFF90000000), (1, 0x8000000000, 0x10000, 0xFFFF90100000)]),
    "B": (0xFFFF800008060000, 92, 0xFFFF0000080A0100, 0x43300000, VTCR48, 48, 0, 0x10002,
          [(0, 0xA00000000000, 0x10000, 0xFFFF90200000)]),
}
STALE = (0xFFFF800008080000, 0xFFFF0000080A0180, 0x43400000)   # kvm, pgt, pgd: not on vm_list
# (root page, entry) per GPA of VM A, from the 40-bit, level-1 layout: 2 root pages
LEAVES_A = {0x2000: 0x4100A000, 0x8000001000: 0x4100B000}


class World:
    """kmem (virtual, linear map over pmem), pmem, syms, BTF of an L1 with VMs A and B."""

    def __init__(self, lay: Layout) -> None:
        self.img = Image(lay)
        self.pmem = DictMem(size=MEM_END)
        self.kmem = _Linear(self.img.mem, self.pmem)
        self.btf = build_btf(lay)
        self.syms = {"vm_list": VM_LIST}
        self._vm_list([VMS["B"][0], VMS["A"][0]])
        for kvm, pid, pgt, pgd, vtcr, ia, sl, vmid, slots in VMS.values():
            self._vm(kvm, pid, pgt, pgd, vtcr, ia, sl, vmid, slots)
        kvm, pgt, pgd = STALE                                     # freed VM left behind
        self._vm(kvm, 77, pgt, pgd, VTCR40, 40, 1, 0x10003, [])
        self._tables_a()

    def _vm_list(self, kvms: list[int]) -> None:
        nodes = [VM_LIST] + [self.img.addr(k, "kvm", "vm_list") for k in kvms]
        for i, node in enumerate(nodes):
            self.img.mem.write_u64(node, nodes[(i + 1) % len(nodes)])
            self.img.mem.write_u64(node + 8, nodes[i - 1])

    def _vm(self, kvm: int, pid: int, pgt: int, pgd_phys: int, vtcr: int, ia: int, sl: int,
            vmid: int, slots: list) -> None:
        img = self.img
        img.put(kvm, "kvm", "userspace_pid", pid)
        mmu = img.addr(kvm, "kvm", "arch.mmu")
        img.put(mmu, "kvm_s2_mmu", "pgd_phys", pgd_phys)
        img.put(mmu, "kvm_s2_mmu", "pgt", pgt)
        img.put(mmu, "kvm_s2_mmu", "vmid.id.counter", vmid)
        if "vtcr" in img.lay["kvm_s2_mmu"][1]:
            img.put(mmu, "kvm_s2_mmu", "vtcr", vtcr)
        else:
            img.put(kvm, "kvm", "arch.vtcr", vtcr)
        for f, v in (("ia_bits", ia), ("start_level", sl), ("mmu", mmu),
                     ("pgd", LM + pgd_phys - MEMSTART)):
            img.put(pgt, "kvm_pgtable", f, v)
        self.pmem.write_u64(pgd_phys, 0)
        self._memslots(kvm, slots)

    def _memslots(self, kvm: int, slots: list) -> None:
        img = self.img
        ms = kvm + 0x8000
        img.put(kvm, "kvm", "memslots[0]", ms)
        img.put(ms, "kvm_memslots", "node_idx", 0)
        addrs = [kvm + 0x9000 + 0x200 * i for i in range(len(slots))]
        for a, (sid, gpa, size, hva) in zip(addrs, slots, strict=True):
            for f, val in (("id", sid), ("base_gfn", gpa >> 12), ("npages", size >> 12),
                           ("userspace_addr", hva), ("flags", 0)):
                img.put(a, "kvm_memory_slot", f, val)
        nodes = [img.addr(a, "kvm_memory_slot", "gfn_node[0]") for a in addrs]
        for parent, right in zip(nodes, nodes[1:], strict=False):
            img.put(parent, "rb_node", "rb_right", right)
        img.put(img.addr(ms, "kvm_memslots", "gfn_tree"), "rb_root", "rb_node",
                nodes[0] if nodes else 0)

    def _tables_a(self) -> None:
        """VM A: 2-page level-1 root; a level-2 and level-3 table under each root page."""
        root = VMS["A"][3]
        for n, (gpa, frame) in enumerate(LEAVES_A.items()):
            l2, l3 = 0x43200000 + 0x2000 * n, 0x43201000 + 0x2000 * n
            self.pmem.write_u64(root + 8 * ((gpa >> 30) & 1023), l2 | 3)
            self.pmem.write_u64(l2 + 8 * ((gpa >> 21) & 511), l3 | 3)
            self.pmem.write_u64(l3 + 8 * ((gpa >> 12) & 511), frame | 0x0040_0000_0000_07DB)

    def run(self, **kw: object) -> list:
        kw.setdefault("mem_size", MEM_END)
        return discover(self.kmem, self.pmem, self.syms, self.btf, **kw)  # type: ignore[arg-type]


class _Linear:
    """Kernel virtual memory: the linear map reads physical memory, the rest the image."""

    def __init__(self, virt: DictMem, pmem: DictMem) -> None:
        self.virt, self.pmem = virt, pmem

    def read(self, addr: int, size: int) -> bytes:
        if LM <= addr < LM + (1 << 47) and not 0xFFFF0000080A0000 <= addr < 0xFFFF0000080B0000:
            return self.pmem.read(lm_to_phys(addr, MEMSTART), size)
        return self.virt.read(addr, size)


@pytest.fixture(params=[debian61, shuffled], ids=["debian61", "shuffled"])
def world(request: pytest.FixtureRequest) -> World:
    return World(request.param())


def _vttbr(name: str) -> int:
    vm = VMS[name]
    return (vm[7] & 0xFFFF) << 48 | vm[3] | 1


def test_reports_each_live_vm_with_its_stage2_and_slots(world: World) -> None:
    vms = world.run(vttbr=_vttbr("A"), vtcr=VTCR40)
    assert [(vm.kvm, vm.pid, vm.root) for vm in vms] == \
        [(VMS[n][0], VMS[n][1], VMS[n][3]) for n in ("B", "A")]
    for vm, name in zip(vms, ("B", "A"), strict=True):
        kvm, _pid, pgt, pgd, vtcr, ia, sl, vmid, slots = VMS[name]
        s2 = vm.stage2
        assert (s2.pgt, s2.pgd_phys, s2.vtcr, s2.ia_bits, s2.start_level, s2.vmid) == \
            (pgt, pgd, vtcr, ia, sl, vmid)
        assert [(s.id, s.gpa, s.size, s.hva) for s in vm.memslots] == slots
    assert STALE[0] not in {vm.kvm for vm in vms}
    assert vms[1].checks["VTTBR_EL2 BADDR == pgd_phys (last VM loaded)"] is True
    assert vms[0].checks["VTTBR_EL2 BADDR == pgd_phys (last VM loaded)"] is None
    assert vms[1].checks["VTCR_EL2 register walk parameters == kvm_pgtable"] is True


def test_walk_reads_both_root_pages_of_a_40_bit_ipa(world: World) -> None:
    vm_a = world.run()[1]
    params = Stage2Params(vm_a.stage2.ia_bits, vm_a.stage2.start_level)
    walk = FORMATS["stage2"].walk(world.pmem, vm_a.root, params)
    assert {m.gpa: m.hpa for m in walk.mappings} == LEAVES_A
    one_page = FORMATS["stage2"].walk(world.pmem, vm_a.root, Stage2Params(39, 1))
    assert 0x8000001000 not in {m.gpa for m in one_page.mappings}


def test_nvhe_zero_vttbr_is_not_available(world: World) -> None:
    vms = world.run(vttbr=0, vtcr=VTCR40)
    assert all(vm.checks["VTTBR_EL2 BADDR == pgd_phys (last VM loaded)"] is None for vm in vms)


def test_vttbr_of_no_live_vm_raises(world: World) -> None:
    with pytest.raises(InfraError, match=r"BADDR 0x43400000\) matches 0 live"):
        world.run(vttbr=STALE[2] | 1 << 48)


def test_vtcr_register_disagreeing_raises_with_both(world: World) -> None:
    with pytest.raises(InfraError, match=r"VTCR_EL2 0x802d3590 gives .*\(48, 0\).*\(40, 1\)"):
        world.run(vttbr=_vttbr("A"), vtcr=VTCR48)


def test_vmid_disagreeing_raises(world: World) -> None:
    with pytest.raises(InfraError, match="VMID"):
        world.run(vttbr=VMS["A"][3] | 7 << 48)


def test_vm_vtcr_disagreeing_with_kvm_pgtable_raises(world: World) -> None:
    world.img.put(VMS["B"][2], "kvm_pgtable", "start_level", 1)
    with pytest.raises(InfraError, match=r"gives \(ia_bits, start_level\) \(48, 0\), its "
                                         r"kvm_pgtable says \(48, 1\)"):
        world.run()


def test_pgt_cross_pointer_raises(world: World) -> None:
    world.img.put(VMS["A"][2], "kvm_pgtable", "mmu", 0xFFFF800008099000)
    with pytest.raises(InfraError, match="not &kvm->arch.mmu"):
        world.run()


def test_pgd_translation_checked_both_ways(world: World) -> None:
    vms = world.run(virt_to_phys=lambda va: lm_to_phys(va, MEMSTART))
    assert vms[0].checks["kvm_pgtable.pgd translates to kvm_s2_mmu.pgd_phys"] is True
    with pytest.raises(InfraError, match="pgd 0xffff000003300000 translates to 0x43301000"):
        world.run(virt_to_phys=lambda va: lm_to_phys(va, MEMSTART) + 0x1000)
    mmu = world.img.addr(VMS["A"][0], "kvm", "arch.mmu")
    world.img.put(mmu, "kvm_s2_mmu", "pgd_phys", VMS["A"][3] + 0x1000)
    world.pmem.write_u64(VMS["A"][3] + 0x1000, 0xDEAD)
    with pytest.raises(InfraError, match="hold different bytes"):
        world.run()


def test_vm_list_from_vm_stat_get_code(world: World) -> None:
    # GCC's code on the live L1: adrp x23, kvm_lock; add x23, x23, #0x680; mov x22, x23;
    # ldr x0, [x22, #32]!  (vm_list = kvm_lock + 32); kvm_lock is a mutex (owner 0)
    func = 0xFFFF80000800B000
    code = b"".join(i.to_bytes(4, "little") for i in (
        0x90000000 | _adrp_imm(func, VM_LIST - 0x20) | 23, 0x911A02F7, 0xAA1703F6,
        0xF8420EC0, 0xD65F03C0))
    world.img.mem.write(func, code)
    assert adrp_targets(code, func) == [VM_LIST - 0x20, VM_LIST]
    syms = {"vm_stat_get": func}
    assert find_vm_list(world.kmem, syms) == VM_LIST
    assert [vm.kvm for vm in discover(world.kmem, world.pmem, syms, world.btf)] == \
        [VMS["B"][0], VMS["A"][0]]
    world.img.mem.write_u64(VM_LIST, 0)                  # a broken head: none left
    with pytest.raises(InfraError, match="0 list heads"):
        find_vm_list(world.kmem, syms)


def _adrp_imm(pc: int, target: int) -> int:
    pages = ((target & ~0xFFF) - (pc & ~0xFFF)) >> 12
    return (pages & 3) << 29 | ((pages >> 2) & 0x7FFFF) << 5


def test_hypervisor_record_names_this_discovery() -> None:
    from harness.hypervisors import HYPERVISORS
    from harness.observe import linux_kvm_arm64 as observer
    hv = HYPERVISORS["linux-kvm-arm64"]
    assert hv.observe is observer.observe and hv.type_modules == () and hv.format == "stage2"
