"""discover() on a constructed VMX L1: KVM structures in a virtual image, VMCS regions in
physical memory at Bochs's layout, the debugger's current VMCS as a third witness.

The struct layouts are defined here (one read from Debian's 6.1 kernel BTF, one
shuffled) and written by the SVM test's own offset resolver; the VMCS regions are
written at the offsets measured on a live Bochs 2.7 (revision 0x2B, EPT pointer at
0x478), not through harness.discovery.vmcs.
"""

from __future__ import annotations

import pytest
from test_discovery_svm import LAYER, Image, Layout, build_btf, debian61

from harness.discovery.linux_kvm_vmx import NO_VMCS, CurrentVmcs, discover
from harness.discovery.vmcs import (
    BOCHS_VMCS,
    VMCS_EPT_POINTER,
    bochs_field_offset,
    eptp_failures,
    scan_vmcss,
)
from harness.errors import InfraError
from harness.kallsyms import parse_kallsyms
from harness.mem import DictMem

VMX_LAYER = {**{k: v for k, v in LAYER.items() if k not in ("kvm_vmcb_info",
                                                             "vmcb_control_area", "vcpu_svm")},
             "loaded_vmcs": 2, "vcpu_vmx": 2}
BOCHS_REVISION, BOCHS_EPTP_OFFSET = 0x2B, 0x478      # measured on Bochs 2.7 (see module doc)


def vmx61() -> Layout:
    """Offsets read from linux-image-6.1.0-57-amd64's BTF (kvm, kvm_intel)."""
    lay = {k: v for k, v in debian61().items() if k in VMX_LAYER}
    lay["loaded_vmcs"] = (0xA0, {"vmcs": (0, "ptr"), "shadow_vmcs": (8, "ptr"),
                                 "cpu": (0x10, "int")})
    lay["vcpu_vmx"] = (0x2380, {"vcpu": (0, "kvm_vcpu"), "vmcs01": (0x1A88, "loaded_vmcs"),
                                "loaded_vmcs": (0x1B28, "ptr")})
    return lay


def shuffled() -> Layout:
    """Same members, other offsets."""
    lay = vmx61()
    lay["kvm_vcpu"] = (0x1000, {"vcpu_idx": (0x8, "int"), "vcpu_id": (0xC, "int"),
                                "kvm": (0x40, "ptr"), "arch": (0x100, "kvm_vcpu_arch")})
    lay["kvm_mmu"] = (0x180, {"root": (0x100, "kvm_mmu_root_info")})
    lay["loaded_vmcs"] = (0x40, {"cpu": (0, "int"), "shadow_vmcs": (0x10, "ptr"),
                                 "vmcs": (0x20, "ptr")})
    lay["vcpu_vmx"] = (0x2000, {"vcpu": (0, "kvm_vcpu"), "loaded_vmcs": (0x1800, "ptr"),
                                "vmcs01": (0x1900, "loaded_vmcs")})
    return lay


def vmcs_region(eptp: int, revision: int = BOCHS_REVISION) -> bytes:
    """A VMCS region as Bochs keeps it after KVM's VMWRITE of the EPT pointer."""
    page = bytearray(b"\x5a" * 4096)
    page[0:4] = revision.to_bytes(4, "little")
    page[BOCHS_EPTP_OFFSET:BOCHS_EPTP_OFFSET + 8] = eptp.to_bytes(8, "little")
    return bytes(page)


def eptp_of(root: int) -> int:
    """construct_eptp(): root | WB | 4-level walk | A/D enabled."""
    return root | 6 | (3 << 3) | (1 << 6)


POB = 0xFFFF888000000000
POB_SYM, VM_LIST = 0xFFFFFFFF82A00000, 0xFFFFFFFFC0900000
MEM_SIZE = 64 << 20
KALLSYMS = f"{POB_SYM:016x} D page_offset_base\n{VM_LIST:016x} d vm_list\t[kvm]\n"

# vm -> kvm address, pid, [(vcpu_idx, vcpu address, VMCS pa)], root, memslots
VMS = {
    "A": (0xFFFFC90000200000, 101, [(0, POB + 0x100000, 0x600000),
                                    (1, POB + 0x110000, 0x601000)], 0x500000,
          [(0, 0x0, 0x10000, 0x7F0000000000, 0), (1, 0x80000, 0x10000, 0x7F0000100000, 2)]),
    "B": (0xFFFFC90000400000, 202, [(0, POB + 0x120000, 0x602000)], 0x700000,
          [(0, 0x0, 0x20000, 0x7F0000200000, 1)]),
}
STALE_VMCS, STALE_ROOT = 0x603000, 0x800000


class World:
    """kmem, pmem, syms and BTF of an L1 with VMs A and B alive and one stale VMCS."""

    def __init__(self, lay: Layout) -> None:
        self.img = Image(lay)
        self.pmem = DictMem(size=MEM_SIZE)
        self.btf = build_btf(lay, VMX_LAYER)
        self.syms = parse_kallsyms(KALLSYMS)
        self.img.mem.write_u64(POB_SYM, POB)
        self.pmem.write(STALE_VMCS, vmcs_region(eptp_of(STALE_ROOT)))
        kvms = [VMS["B"][0], VMS["A"][0]]                  # newest first, like list_add
        nodes = [VM_LIST] + [self.img.addr(k, "kvm", "vm_list") for k in kvms]
        for i, node in enumerate(nodes):
            self.img.mem.write_u64(node, nodes[(i + 1) % len(nodes)])
            self.img.mem.write_u64(node + 8, nodes[i - 1])
        for kvm, pid, vcpus, root, slots in VMS.values():
            self._vm(kvm, pid, vcpus, root, slots)

    @property
    def kmem(self) -> DictMem:
        return self.img.mem

    def _vm(self, kvm: int, pid: int, vcpus: list, root: int, slots: list) -> None:
        img = self.img
        img.put(kvm, "kvm", "userspace_pid", pid)
        for idx, vcpu, vmcs_pa in vcpus:
            self.vcpu(kvm, idx, vcpu, vmcs_pa, root)
        xa = img.addr(kvm, "kvm", "vcpu_array")
        if len(vcpus) == 1:
            img.put(xa, "xarray", "xa_head", vcpus[0][1])
        else:
            node = kvm + 0x8000
            img.put(xa, "xarray", "xa_head", node | 2)
            for idx, vcpu, _ in vcpus:
                img.put(node, "xa_node", f"slots[{idx}]", vcpu)
        ms = kvm + 0xA000
        img.put(kvm, "kvm", "memslots[0]", ms)
        img.put(ms, "kvm_memslots", "node_idx", 0)
        addrs = [kvm + 0xB000 + 0x200 * i for i in range(len(slots))]
        for a, (sid, gpa, size, hva, flags) in zip(addrs, slots, strict=True):
            for name, val in (("id", sid), ("base_gfn", gpa >> 12), ("npages", size >> 12),
                              ("userspace_addr", hva), ("flags", flags)):
                img.put(a, "kvm_memory_slot", name, val)
        nodes = [img.addr(a, "kvm_memory_slot", "gfn_node[0]") for a in addrs]
        for parent, left in zip(nodes[1:], nodes[:-1], strict=True):
            img.put(parent, "rb_node", "rb_left", left)
        img.put(img.addr(ms, "kvm_memslots", "gfn_tree"), "rb_root", "rb_node", nodes[-1])

    def vcpu(self, kvm: int, idx: int, vcpu: int, vmcs_pa: int, root: int) -> None:
        img = self.img
        img.put(vcpu, "kvm_vcpu", "kvm", kvm)
        img.put(vcpu, "kvm_vcpu", "vcpu_idx", idx)
        img.put(vcpu, "kvm_vcpu", "vcpu_id", idx + 10)
        mmu = img.addr(vcpu, "kvm_vcpu", "arch.root_mmu")
        img.put(vcpu, "kvm_vcpu", "arch.mmu", mmu)
        img.put(mmu, "kvm_mmu", "root.hpa", root)
        img.put(vcpu, "vcpu_vmx", "vmcs01.vmcs", POB + vmcs_pa)
        img.put(vcpu, "vcpu_vmx", "loaded_vmcs", img.addr(vcpu, "vcpu_vmx", "vmcs01"))
        self.pmem.write(vmcs_pa, vmcs_region(eptp_of(root)))

    def run(self, **kw: object) -> list:
        kw.setdefault("mem_size", MEM_SIZE)
        return discover(self.kmem, self.pmem, self.syms, self.btf, **kw)  # type: ignore[arg-type]


@pytest.fixture(params=[vmx61, shuffled], ids=["debian61", "shuffled"])
def world(request: pytest.FixtureRequest) -> World:
    return World(request.param())


CURRENT_A1 = (CurrentVmcs(0, 0x601000, eptp_of(0x500000)),)


def test_reports_each_live_vm_with_root_eptp_vcpus_and_slots(world: World) -> None:
    vms = world.run(current=CURRENT_A1)
    assert [(vm.kvm, vm.pid, vm.root, vm.eptp) for vm in vms] == \
        [(VMS[n][0], VMS[n][1], VMS[n][3], eptp_of(VMS[n][3])) for n in ("B", "A")]
    for vm, name in zip(vms, ("B", "A"), strict=True):
        _kvm, _pid, vcpus, root, slots = VMS[name]
        assert [(v.index, v.addr, v.vmcs_pa, v.revision, v.eptp, v.root_hpa, v.vcpu_id)
                for v in vm.vcpus] == [(i, a, pa, BOCHS_REVISION, eptp_of(root), root, i + 10)
                                       for i, a, pa in vcpus]
        assert [(s.id, s.gpa, s.size, s.hva, s.flags) for s in vm.memslots] == slots
    b, a = vms
    assert [v.current_on for v in a.vcpus] == [(), (0,)] and b.vcpus[0].current_on == ()
    assert all(a.checks.values()) and len(a.checks) == 4
    assert b.checks["debugger's current VMCS and EPTP agree"] is None


def test_stale_vmcs_lingers_but_is_never_reported(world: World) -> None:
    found = {c.pa: c.eptp for c in scan_vmcss(world.pmem, MEM_SIZE)}
    assert found == {0x600000: eptp_of(0x500000), 0x601000: eptp_of(0x500000),
                     0x602000: eptp_of(0x700000), STALE_VMCS: eptp_of(STALE_ROOT)}
    vms = world.run()
    assert STALE_ROOT not in {vm.root for vm in vms}
    assert STALE_VMCS not in {v.vmcs_pa for vm in vms for v in vm.vcpus}


def test_eptp_naming_another_root_raises_with_both_values(world: World) -> None:
    world.pmem.write(0x601000, vmcs_region(eptp_of(0x555000)))
    with pytest.raises(InfraError, match=r"EPT pointer 0x55505e != .*root.hpa 0x500000"):
        world.run()


@pytest.mark.parametrize("bad, reason", [
    (0x500000 | 0 | (3 << 3) | (1 << 6), "memory type 0"),       # UC
    (0x500000 | 6 | (2 << 3) | (1 << 6), "page-walk length 3"),
])
def test_eptp_kvm_never_builds_raises(world: World, bad: int, reason: str) -> None:
    world.pmem.write(0x600000, vmcs_region(bad))
    world.pmem.write(0x601000, vmcs_region(bad))
    with pytest.raises(InfraError, match=reason):
        world.run()


def test_unknown_vmcs_revision_is_not_read_but_kvm_root_stands(world: World) -> None:
    for pa in (0x600000, 0x601000):
        world.pmem.write(pa, vmcs_region(0xDEAD000, revision=0x12345))   # a hardware CPU
    a = world.run()[1]
    assert a.root == 0x500000 and a.eptp is None
    assert [v.eptp for v in a.vcpus] == [None, None]
    assert a.checks["VMCS EPT pointer == arch.mmu->root.hpa"] is None


def test_debugger_current_vmcs_of_no_live_vcpu_raises(world: World) -> None:
    with pytest.raises(InfraError, match="current VMCS 0x603000 belongs to no vCPU"):
        world.run(current=(CurrentVmcs(0, STALE_VMCS, eptp_of(STALE_ROOT)),))


def test_debugger_eptp_differing_from_memory_raises(world: World) -> None:
    with pytest.raises(InfraError, match="debugger's EPTP 0x70005e for VMCS 0x601000"):
        world.run(current=(CurrentVmcs(0, 0x601000, eptp_of(0x700000)),))


def test_no_current_vmcs_means_not_available(world: World) -> None:
    vms = world.run(current=(CurrentVmcs(0, NO_VMCS, 0),))
    assert {vm.checks["debugger's current VMCS and EPTP agree"] for vm in vms} == {None}


def test_vcpu_in_nested_guest_mode_raises(world: World) -> None:
    world.img.put(POB + 0x120000, "vcpu_vmx", "loaded_vmcs", POB + 0x130000)
    with pytest.raises(InfraError, match="runs a nested guest"):
        world.run()


def test_vmcs_outside_the_direct_map_raises(world: World) -> None:
    world.img.put(POB + 0x110000, "vcpu_vmx", "vmcs01.vmcs", 0xFFFFC90000611000)
    with pytest.raises(InfraError, match="vmcs01.vmcs 0xffffc90000611000 is not a page"):
        world.run()


def test_vcpus_disagreeing_on_the_root_raise(world: World) -> None:
    world.vcpu(VMS["A"][0], 1, POB + 0x110000, 0x601000, 0x510000)
    with pytest.raises(InfraError, match="disagree on the EPT root.*0x500000.*0x510000"):
        world.run()


def test_vcpu_without_root_is_kept_but_not_checked(world: World) -> None:
    mmu = world.img.addr(POB + 0x120000, "kvm_vcpu", "arch.root_mmu")
    world.img.put(mmu, "kvm_mmu", "root.hpa", (1 << 64) - 1)        # INVALID_PAGE
    world.pmem.write(0x602000, vmcs_region(0))
    b = world.run()[0]
    assert b.root is None and b.eptp is None and b.vcpus[0].root_hpa is None


def test_empty_vm_list_means_no_vms(world: World) -> None:
    world.kmem.write_u64(VM_LIST, VM_LIST)
    assert world.run() == []


# -- the VMCS layout on its own -----------------------------------------------------------

@pytest.mark.parametrize("encoding, offset", [
    (VMCS_EPT_POINTER, 0x478),     # 64-bit control: seen live at 0x478
    (0x0000, 0x010),               # VIRTUAL_PROCESSOR_ID, 16-bit control: seen live (vpid 1)
    (0x201B, 0x47C),               # EPT pointer, high half: the next 4 bytes
    (0x681E, 0xE88),               # GUEST_RIP: natural width, guest state
])
def test_bochs_field_offsets(encoding: int, offset: int) -> None:
    assert bochs_field_offset(encoding) == offset
    assert BOCHS_VMCS.offset(encoding) == offset


def test_eptp_failures_accepts_kvm_pointers_only() -> None:
    assert eptp_failures(eptp_of(0x500000), MEM_SIZE) == []
    assert eptp_failures(0x500000 | 6 | (4 << 3), MEM_SIZE) == []        # 5 levels, no A/D
    assert "root" in eptp_failures(eptp_of(MEM_SIZE), MEM_SIZE)[0]
    assert "reserved" in eptp_failures(eptp_of(0x500000) | 0x100, MEM_SIZE)[0]


def test_hypervisor_record_and_default_from_the_image() -> None:
    from harness.hypervisors import HYPERVISORS, default_hypervisor
    from harness.images import image_facts
    from harness.observe import linux_kvm_vmx as observer
    hv = HYPERVISORS["linux-kvm-vmx"]
    assert hv.observe is observer.observe and hv.format == "ept" and hv.arch == "x86_64"
    assert set(hv.type_modules) == {"kvm", "kvm_intel"} and "vm_list" in hv.symbols
    facts = image_facts("linux-amd64-vmx")
    assert facts.hypervisor == "linux-kvm-vmx"
    assert default_hypervisor("linux", "x86_64", facts.hypervisor) == "linux-kvm-vmx"
    assert default_hypervisor("linux", "x86_64", image_facts("linux-amd64").hypervisor) \
        == "linux-kvm-svm"

