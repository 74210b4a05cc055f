"""discover() on a constructed L1: KVM structures in a virtual image, VMCBs in physical.

The struct layouts are defined here (one copied from Debian's 6.1 kernel BTF,
one shuffled), turned into BTF by the test encoder, and written into memory by
this file's own offset resolver, so the code under test is checked against
layouts it has never seen.
"""

from __future__ import annotations

import pytest
from test_btf import BtfBuilder
from test_vmcb import vmcb_page

from harness.btf import Btf, Kind
from harness.discovery.linux_kvm_svm import discover, scan_vmcbs
from harness.discovery.linux_lists import (
    WalkLimitError,
    list_for_each,
    rbtree_inorder,
    xa_for_each,
)
from harness.errors import InfraError, RegistryLookupError
from harness.kallsyms import SymbolLookupError, parse_kallsyms
from harness.mem import DictMem

Layout = dict[str, tuple[int, dict[str, tuple[int, str]]]]

PRIM = {"u8": 1, "u16": 2, "u32": 4, "u64": 8, "int": 4, "short": 2, "ptr": 8, "pid_t": 4}
SIGNED = {"int", "short", "pid_t"}
LAYER = {"list_head": 0, "xarray": 0, "xa_node": 0, "rb_node": 0, "rb_root": 0,
         "mm_struct": 0, "task_struct": 0,
         "kvm_mmu_root_info": 1, "kvm_mmu": 1, "kvm_vcpu_arch": 1, "kvm_vcpu": 1,
         "kvm_memslots": 1, "kvm_memory_slot": 1, "kvm": 1,
         "kvm_vmcb_info": 2, "vmcb_control_area": 2, "vcpu_svm": 2}


def debian61() -> Layout:
    """Offsets read from linux-image-6.1.0-54-amd64's BTF (kvm, kvm_amd)."""
    return {
        "list_head": (16, {"next": (0, "ptr"), "prev": (8, "ptr")}),
        "xarray": (16, {"xa_lock": (0, "u32"), "xa_flags": (4, "u32"), "xa_head": (8, "ptr")}),
        "xa_node": (0x240, {"shift": (0, "u8"), "offset": (1, "u8"), "count": (2, "u8"),
                            "parent": (8, "ptr"), "slots": (0x28, "ptr[64]")}),
        "rb_node": (24, {"__rb_parent_color": (0, "u64"), "rb_right": (8, "ptr"),
                         "rb_left": (16, "ptr")}),
        "rb_root": (8, {"rb_node": (0, "ptr")}),
        "mm_struct": (0x400, {"owner": (928, "ptr")}),           # linux-image-6.1.0-57-amd64
        "task_struct": (0x2600, {"pid": (2416, "pid_t"), "tgid": (2420, "pid_t")}),
        "kvm_mmu_root_info": (16, {"pgd": (0, "u64"), "hpa": (8, "u64")}),
        "kvm_mmu": (0x180, {"root": (0x38, "kvm_mmu_root_info")}),
        "kvm_vcpu_arch": (0x1800, {"mmu": (0x178, "ptr"), "root_mmu": (0x180, "kvm_mmu")}),
        "kvm_vcpu": (0x1998, {"kvm": (0, "ptr"), "vcpu_id": (0x24, "int"),
                              "vcpu_idx": (0x28, "int"), "arch": (0x128, "kvm_vcpu_arch")}),
        "kvm_memslots": (0x430, {"generation": (0, "u64"), "gfn_tree": (0x20, "rb_root"),
                                 "node_idx": (0x428, "int")}),
        "kvm_memory_slot": (0x108, {"gfn_node": (0x80, "rb_node[2]"), "base_gfn": (0xb0, "u64"),
                                    "npages": (0xb8, "u64"), "userspace_addr": (0xf8, "u64"),
                                    "flags": (0x100, "u32"), "id": (0x104, "short")}),
        "kvm": (40504, {"mm": (0x48, "ptr"), "memslots": (0x1118, "ptr[2]"),
                        "vcpu_array": (0x1128, "xarray"), "vm_list": (0x1178, "list_head"),
                        "userspace_pid": (0x9dd8, "pid_t")}),
        "kvm_vmcb_info": (32, {"ptr": (0, "ptr"), "pa": (8, "u64")}),
        "vmcb_control_area": (0x400, {"intercepts": (0, "u32[6]"), "iopm_base_pa": (0x40, "u64"),
                                      "msrpm_base_pa": (0x48, "u64"), "asid": (0x58, "u32"),
                                      "nested_ctl": (0x90, "u64"), "nested_cr3": (0xb0, "u64")}),
        "vcpu_svm": (0x1c50, {"vcpu": (0, "kvm_vcpu"), "vmcb01": (0x19a0, "kvm_vmcb_info")}),
    }


def shuffled() -> Layout:
    """Same members, other offsets: hard-coded offsets would read garbage."""
    lay = debian61()
    lay["kvm"] = (0x3000, {"userspace_pid": (0x10, "pid_t"), "vm_list": (0x200, "list_head"),
                           "vcpu_array": (0x800, "xarray"), "memslots": (0x1000, "ptr[2]"),
                           "mm": (0x2000, "ptr")})
    lay["kvm_vcpu"] = (0x1000, {"vcpu_idx": (0x8, "int"), "vcpu_id": (0xc, "int"),
                                "kvm": (0x40, "ptr"), "arch": (0x100, "kvm_vcpu_arch")})
    lay["kvm_vcpu_arch"] = (0x800, {"root_mmu": (0x0, "kvm_mmu"), "mmu": (0x400, "ptr")})
    lay["mm_struct"] = (0x100, {"owner": (0x18, "ptr")})
    lay["task_struct"] = (0x100, {"tgid": (0x8, "pid_t"), "pid": (0x40, "pid_t")})
    lay["kvm_mmu"] = (0x180, {"root": (0x100, "kvm_mmu_root_info")})
    lay["kvm_memslots"] = (0x80, {"node_idx": (0x0, "int"), "gfn_tree": (0x40, "rb_root"),
                                  "generation": (0x48, "u64")})
    lay["kvm_memory_slot"] = (0x100, {"id": (0x0, "short"), "flags": (0x4, "u32"),
                                      "base_gfn": (0x8, "u64"), "npages": (0x10, "u64"),
                                      "userspace_addr": (0x18, "u64"),
                                      "gfn_node": (0x40, "rb_node[2]")})
    lay["vcpu_svm"] = (0x2000, {"vcpu": (0, "kvm_vcpu"), "vmcb01": (0x1800, "kvm_vmcb_info")})
    lay["kvm_vmcb_info"] = (32, {"pa": (0, "u64"), "ptr": (0x10, "ptr")})
    return lay


# -- layout -> BTF ----------------------------------------------------------------


def build_btf(lay: Layout, layers: dict[str, int] = LAYER) -> Btf:
    """vmlinux + kvm + kvm_amd split BTF for *lay* (vcpu_svm sees kvm_vcpu as a FWD);
    *layers* puts each struct in vmlinux (0), kvm (1) or the vendor module (2)."""
    base = BtfBuilder()
    prim = {n: base.int_(n, s, n in SIGNED) for n, s in PRIM.items() if n not in ("ptr", "pid_t")}
    prim["ptr"] = base.ptr(0)
    prim["pid_t"] = base.ref(Kind.TYPEDEF, prim["int"], "pid_t")
    builders = {0: base}
    ids: dict[tuple[int, str], int] = {}
    for name, layer in layers.items():
        b = builders.get(layer) or builders.setdefault(layer, BtfBuilder(base))
        size, members = lay[name]
        enc = [(m, _type_id(b, layer, t, prim, ids), off * 8) for m, (off, t) in members.items()]
        ids[(layer, name)] = b.struct(name, size, enc)
    return Btf.load(base.encode(), [builders[1].encode(), builders[2].encode()])


def _type_id(b: BtfBuilder, layer: int, t: str, prim: dict[str, int],
             ids: dict[tuple[int, str], int]) -> int:
    """A type id for ``u64``, ``ptr``, ``rb_node[2]``, ``kvm_vcpu``... in *layer*."""
    if "[" in t:
        elem, n = t[:-1].split("[")
        return b.array(_type_id(b, layer, elem, prim, ids), int(n), prim["u32"])
    if t in prim:
        return prim[t]
    for key in ((0, t), (layer, t)):
        if key in ids:
            return ids[key]
    return b.add(Kind.FWD, t, 0, 0)


# -- layout -> memory (this file's own offset resolver) ---------------------------


class Image:
    """Kernel virtual memory written through the test's layout."""

    def __init__(self, lay: Layout) -> None:
        self.lay = lay
        self.mem = DictMem(size=1 << 64)

    def where(self, struct: str, path: str) -> tuple[int, int]:
        """(offset, size) of *path* in *struct*."""
        off, t = 0, struct
        for part in path.split("."):
            name, _, index = part.partition("[")
            moff, t = self.lay[t][1][name]
            off += moff
            if index:
                t, _, _n = t.partition("[")
                off += int(index.rstrip("]")) * self.size(t)
        return off, self.size(t)

    def size(self, t: str) -> int:
        """Byte size of a primitive, struct or ``elem[n]`` type."""
        if "[" in t:
            elem, n = t[:-1].split("[")
            return self.size(elem) * int(n)
        return PRIM[t] if t in PRIM else self.lay[t][0]

    def put(self, addr: int, struct: str, path: str, value: int) -> None:
        """Write *value* into member *path* of the *struct* at *addr*."""
        off, size = self.where(struct, path)
        self.mem.write(addr + off, (value % (1 << 8 * size)).to_bytes(size, "little"))

    def addr(self, addr: int, struct: str, path: str) -> int:
        """``&((struct *)addr)->path``."""
        return addr + self.where(struct, path)[0]


# -- the constructed L1 -----------------------------------------------------------

POB = 0xFFFF888000000000            # page_offset_base
POB_SYM, VM_LIST = 0xFFFFFFFF82A00000, 0xFFFFFFFFC0900000
MEM_SIZE = 64 << 20
KALLSYMS = f"{POB_SYM:016x} D page_offset_base\n{VM_LIST:016x} d vm_list\t[kvm]\n"

# vm name -> kvm address, pid, [(vcpu_idx, vcpu address, VMCB pa, asid)], root, slots
VMS = {
    "A": (0xFFFFC90000200000, 101, [(0, POB + 0x100000, 0x600000, 1),
                                    (1, POB + 0x110000, 0x601000, 2)], 0x500000,
          [(0, 0x0, 0x10000, 0x7F0000000000, 0), (1, 0x80000, 0x10000, 0x7F0000100000, 2)]),
    "B": (0xFFFFC90000400000, 202, [(0, POB + 0x120000, 0x602000, 3)], 0x700000,
          [(0, 0x0, 0x20000, 0x7F0000200000, 1)]),
}
STALE_VMCB, STALE_NCR3 = 0x603000, 0x800000


class World:
    """kmem, pmem, syms and BTF of an L1 with VMs A and B alive and one stale VMCB."""

    def __init__(self, lay: Layout) -> None:
        self.lay = lay
        self.img = Image(lay)
        self.pmem = DictMem(size=MEM_SIZE)
        self.btf = build_btf(lay)
        self.syms = parse_kallsyms(KALLSYMS)
        self.img.mem.write_u64(POB_SYM, POB)
        self.pmem.write(STALE_VMCB, vmcb_page(ncr3=STALE_NCR3, asid=9))
        self._vm_list([VMS["B"][0], VMS["A"][0]])        # newest first, like list_add
        for name, (kvm, pid, vcpus, root, slots) in VMS.items():
            self._vm(name, kvm, pid, vcpus, root, slots)

    @property
    def kmem(self) -> DictMem:
        return self.img.mem

    def _vm_list(self, kvms: list[int]) -> None:
        img = self.img
        nodes = [VM_LIST] + [img.addr(k, "kvm", "vm_list") for k in kvms]
        for i, node in enumerate(nodes):
            img.mem.write_u64(node, nodes[(i + 1) % len(nodes)])
            img.mem.write_u64(node + 8, nodes[i - 1])

    def _vm(self, name: str, kvm: int, pid: int, vcpus: list, root: int, slots: list) -> None:
        img = self.img
        img.put(kvm, "kvm", "userspace_pid", pid)
        mm, task = kvm + 0x10000, kvm + 0x20000      # its mm, owned by the main thread
        img.put(kvm, "kvm", "mm", mm)
        if "owner" in self.lay["mm_struct"][1]:
            img.put(mm, "mm_struct", "owner", task)
            img.put(task, "task_struct", "pid", pid - 1)
            img.put(task, "task_struct", "tgid", pid - 1)
        for idx, vcpu, vmcb_pa, asid in vcpus:
            self._vcpu(kvm, idx, vcpu, vmcb_pa, asid, root)
        xa = img.addr(kvm, "kvm", "vcpu_array")
        if len(vcpus) == 1:
            img.put(xa, "xarray", "xa_head", vcpus[0][1])      # a lone entry at index 0
        else:
            node = kvm + 0x8000
            img.put(xa, "xarray", "xa_head", node | 2)
            for idx, vcpu, *_ in vcpus:
                img.put(node, "xa_node", f"slots[{idx}]", vcpu)
        self._memslots(kvm, slots, node_idx=1 if name == "A" else 0)

    def _vcpu(self, kvm: int, idx: int, vcpu: int, vmcb_pa: int, asid: int, root: int) -> None:
        img = self.img
        img.put(vcpu, "kvm_vcpu", "kvm", kvm)
        img.put(vcpu, "kvm_vcpu", "vcpu_idx", idx)
        img.put(vcpu, "kvm_vcpu", "vcpu_id", idx + 10)
        mmu = img.addr(vcpu, "kvm_vcpu", "arch.root_mmu")
        img.put(vcpu, "kvm_vcpu", "arch.mmu", mmu)
        img.put(mmu, "kvm_mmu", "root.hpa", root)
        img.put(vcpu, "vcpu_svm", "vmcb01.pa", vmcb_pa)
        img.put(vcpu, "vcpu_svm", "vmcb01.ptr", POB + vmcb_pa)
        self.pmem.write(vmcb_pa, vmcb_page(ncr3=root, asid=asid))

    def _memslots(self, kvm: int, slots: list, node_idx: int) -> None:
        """An rb-tree through gfn_node[node_idx]; the other node set is a trap (a loop)."""
        img = self.img
        ms = kvm + 0xA000
        img.put(kvm, "kvm", "memslots[0]", ms)
        img.put(ms, "kvm_memslots", "node_idx", node_idx)
        addrs = [kvm + 0xB000 + 0x200 * i for i in range(len(slots))]
        for a, (sid, gpa, size, hva, flags) in zip(addrs, slots, strict=True):
            for field, val in (("id", sid), ("base_gfn", gpa >> 12), ("npages", size >> 12),
                               ("userspace_addr", hva), ("flags", flags)):
                img.put(a, "kvm_memory_slot", field, val)
            trap = img.addr(a, "kvm_memory_slot", f"gfn_node[{1 - node_idx}]")
            img.put(a, "kvm_memory_slot", f"gfn_node[{1 - node_idx}].rb_left", trap)
        nodes = [img.addr(a, "kvm_memory_slot", f"gfn_node[{node_idx}]") for a in addrs]
        root = nodes[-1]                                   # the highest GPA at the root
        for left in reversed(nodes[:-1]):
            img.put(root, "rb_node", "rb_left", left)
            root = left
        img.put(img.addr(ms, "kvm_memslots", "gfn_tree"), "rb_root", "rb_node", nodes[-1])

    def vmruns(self) -> list[int]:
        return [v[2] for vm in VMS.values() for v in vm[2]] + [STALE_VMCB]

    def run(self, **kw: object) -> list:
        kw.setdefault("mem_size", MEM_SIZE)
        return discover(self.kmem, self.pmem, self.syms, self.btf, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=[debian61, shuffled], ids=["debian61", "shuffled"])
def world(request: pytest.FixtureRequest) -> World:
    return World(request.param())


# -- discover() ---------------------------------------------------------------------


def test_reports_each_live_vm_with_root_vcpus_and_slots(world: World) -> None:
    vms = world.run(vmrun_vmcbs=world.vmruns())
    assert [(vm.kvm, vm.pid, vm.root) for vm in vms] == \
        [(VMS[n][0], VMS[n][1], VMS[n][3]) for n in ("B", "A")]
    for vm, name in zip(vms, ("B", "A"), strict=True):
        _kvm, _pid, vcpus, root, slots = VMS[name]
        assert [(v.index, v.addr, v.vmcb_pa, v.asid, v.ncr3, v.root_hpa, v.vcpu_id)
                for v in vm.vcpus] == [(i, a, pa, asid, root, root, i + 10)
                                       for i, a, pa, asid in vcpus]
        assert [(s.id, s.gpa, s.size, s.hva, s.flags) for s in vm.memslots] == slots
        assert all(vm.checks.values()) and len(vm.checks) == 4


def test_process_id_is_the_owner_of_the_mm(world: World) -> None:
    # userspace_pid is the creating thread; the process is kvm->mm->owner->tgid
    vms = world.run(vmrun_vmcbs=world.vmruns())
    assert [(vm.pid, vm.tgid) for vm in vms] == [(202, 201), (101, 100)]


def test_no_mm_owner_in_this_kernel_gives_no_process_id() -> None:
    lay = debian61()
    lay["mm_struct"] = (0x400, {"mmap_base": (0x10, "u64")})      # CONFIG_MEMCG off
    vms = World(lay).run()
    assert [(vm.pid, vm.tgid) for vm in vms] == [(202, None), (101, None)]


def test_stale_vmcb_lingers_but_is_never_reported(world: World) -> None:
    found = {c.pa: c.control.nested_cr3 for c in scan_vmcbs(world.pmem, MEM_SIZE)}
    assert found[STALE_VMCB] == STALE_NCR3                 # the scan does see it
    vms = world.run(vmrun_vmcbs=world.vmruns())
    assert len(found) == 4 and len(vms) == 2
    assert STALE_NCR3 not in {vm.root for vm in vms}
    assert STALE_VMCB not in {v.vmcb_pa for vm in vms for v in vm.vcpus}


def test_mismatching_ncr3_raises_with_both_values(world: World) -> None:
    world.pmem.write(0x601000, vmcb_page(ncr3=0x555000, asid=2))
    with pytest.raises(InfraError, match=r"nCR3 0x555000 != .*root.hpa 0x500000"):
        world.run()


def test_vmcb_absent_from_vmrun_log_raises(world: World) -> None:
    with pytest.raises(InfraError, match="0x602000 never seen in QEMU's vmrun! log"):
        world.run(vmrun_vmcbs=[0x600000, 0x601000])
    vms = world.run(vmrun_vmcbs=None)
    assert vms[0].checks["vmcb01.pa in QEMU vmrun! log"] is None


def test_live_vmcb_failing_the_signature_raises(world: World) -> None:
    world.pmem.write(0x602000, vmcb_page(ncr3=0x700000, asid=0))
    with pytest.raises(InfraError, match="not a live NPT VMCB: ASID 0"):
        world.run()


def test_vmcb_ptr_outside_the_direct_map_raises(world: World) -> None:
    world.img.put(POB + 0x110000, "vcpu_svm", "vmcb01.ptr", POB + 0x611000)
    with pytest.raises(InfraError, match="vmcb01.ptr 0xffff888000611000 != page_offset_base"):
        world.run()


def test_vcpu_of_another_vm_raises(world: World) -> None:
    world.img.put(POB + 0x120000, "kvm_vcpu", "kvm", VMS["A"][0])
    with pytest.raises(InfraError, match="not a vCPU of this VM"):
        world.run()


def test_vcpus_disagreeing_on_the_root_raise(world: World) -> None:
    mmu = world.img.addr(POB + 0x110000, "kvm_vcpu", "arch.root_mmu")
    world.img.put(mmu, "kvm_mmu", "root.hpa", 0x510000)
    world.pmem.write(0x601000, vmcb_page(ncr3=0x510000, asid=2))
    with pytest.raises(InfraError, match="disagree on the nested root.*0x500000.*0x510000"):
        world.run()


def test_sme_c_bit_in_ncr3_is_masked(world: World) -> None:
    world.pmem.write(0x602000, vmcb_page(ncr3=0x700000 | 1 << 47, asid=3))
    vms = world.run()
    assert vms[0].root == 0x700000 and vms[0].vcpus[0].ncr3 == 0x700000 | 1 << 47


def test_vcpu_without_root_is_kept_but_not_checked(world: World) -> None:
    mmu = world.img.addr(POB + 0x120000, "kvm_vcpu", "arch.root_mmu")
    world.img.put(mmu, "kvm_mmu", "root.hpa", (1 << 64) - 1)        # INVALID_PAGE
    world.pmem.write(0x602000, bytes(4096))
    vm_b = world.run()[0]
    assert vm_b.root is None and vm_b.vcpus[0].root_hpa is None


def test_empty_vm_list_means_no_vms(world: World) -> None:
    world.kmem.write_u64(VM_LIST, VM_LIST)
    assert world.run() == []


def test_missing_symbol_is_named(world: World) -> None:
    syms = parse_kallsyms(f"{POB_SYM:016x} D page_offset_base\n")
    with pytest.raises(SymbolLookupError, match="vm_list"):
        discover(world.kmem, world.pmem, syms, world.btf)


def test_a_kernel_without_page_offset_base_has_the_fixed_direct_map(world: World) -> None:
    """No CONFIG_RANDOMIZE_MEMORY nor X86_5LEVEL: no page_offset_base variable, the
    direct map is at 0xffff888000000000 (this world's); a kernel whose map is elsewhere
    fails the vmcb01 cross-check instead of passing silently."""
    syms = parse_kallsyms(f"{VM_LIST:016x} d vm_list\t[kvm]\n")
    assert POB == 0xFFFF888000000000
    assert discover(world.kmem, world.pmem, syms, world.btf, mem_size=MEM_SIZE) == \
        world.run()


def test_hypervisor_record_names_this_discovery() -> None:
    from harness.hypervisors import HYPERVISORS
    from harness.observe import linux_kvm_svm as observer
    hv = HYPERVISORS["linux-kvm-svm"]
    assert hv.observe is observer.observe and "vm_list" in hv.symbols
    assert set(hv.type_modules) == {"kvm", "kvm_amd"} and hv.format == "npt"
    with pytest.raises(RegistryLookupError, match="linux-kvm-svm"):
        HYPERVISORS["openbsd-vmm"]


# -- the walkers on their own ---------------------------------------------------------


def test_xarray_two_levels_skips_internal_entries() -> None:
    img = Image(debian61())
    btf = build_btf(debian61())
    xa, top, leaf = 0x1000, 0x2000, 0x3000
    img.put(xa, "xarray", "xa_head", top | 2)
    img.put(top, "xa_node", "shift", 6)
    img.put(top, "xa_node", "slots[0]", 0xFFFF888000001000)
    img.put(top, "xa_node", "slots[1]", leaf | 2)
    img.put(leaf, "xa_node", "slots[3]", 0xFFFF888000003000)
    img.put(leaf, "xa_node", "slots[4]", (256 << 2) | 2)       # XA_RETRY_ENTRY
    img.put(leaf, "xa_node", "slots[5]", (3 << 2) | 2)         # a sibling entry
    img.put(leaf, "xa_node", "slots[63]", 0xFFFF888000005000)
    assert list(xa_for_each(img.mem, btf, xa)) == [
        (0, 0xFFFF888000001000), (67, 0xFFFF888000003000), (127, 0xFFFF888000005000)]


def test_list_loop_raises() -> None:
    img, btf = Image(debian61()), build_btf(debian61())
    for node, nxt in ((0x100, 0x200), (0x200, 0x300), (0x300, 0x200)):
        img.mem.write_u64(node, nxt)
    with pytest.raises(WalkLimitError, match="list at 0x100"):
        list(list_for_each(img.mem, btf, 0x100))


def test_rbtree_inorder_of_a_balanced_tree() -> None:
    img, btf = Image(debian61()), build_btf(debian61())
    # keys 1..7, node address = key * 0x100; root 4, children 2/6, leaves 1 3 5 7
    for parent, left, right in ((4, 2, 6), (2, 1, 3), (6, 5, 7)):
        img.put(parent * 0x100, "rb_node", "rb_left", left * 0x100)
        img.put(parent * 0x100, "rb_node", "rb_right", right * 0x100)
    img.put(0x10, "rb_root", "rb_node", 0x400)
    assert [n // 0x100 for n in rbtree_inorder(img.mem, btf, 0x10)] == list(range(1, 8))
    img.put(0x700, "rb_node", "rb_left", 0x400)                # corrupt: a cycle
    with pytest.raises(WalkLimitError):
        list(rbtree_inorder(img.mem, btf, 0x10))


def test_every_hypervisor_reads_the_symbols_its_frame_oracle_needs() -> None:
    from harness.hypervisors import HYPERVISORS
    for name, hv in HYPERVISORS.items():
        if hv.frames is not None:
            assert set(hv.frames.symbols) <= set(hv.symbols), name


def test_every_hypervisors_models_judge_its_format() -> None:
    """A hypervisor may only name models that can judge its tables (openbsd-vmm-rvi
    offered openbsd-vmm-old, which knows EPT only)."""
    from harness.hypervisors import HYPERVISORS
    from harness.models import MODELS
    for name, hv in HYPERVISORS.items():
        for model in hv.models:
            assert hv.format in MODELS[model].formats, (name, model)
