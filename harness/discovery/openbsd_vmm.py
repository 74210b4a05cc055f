"""Live OpenBSD vmm(4) VMs and their nested roots, read from L1 kernel memory with CTF.

The walk follows vmm's own data (``sys/dev/vmm/vmm.h`` rev 1.11, 2025-07-15;
``sys/dev/vmm/vmm.c`` rev 1.6), every offset from the kernel's CTF
(:class:`harness.ctf.Ctf`) and the one address from the symbol table:

``vmm_softc`` (a pointer) -> ``vm_list.slh_first`` -> each ``struct vm``
(``vm_link.sle_next``; newest first, ``SLIST_INSERT_HEAD``) -> the nested
pmap -> ``pm_pdirpa``.  The nested pmap is ``vm->vm_pmap`` in the new design
(vm_pmap plus one uao per memory range) and ``vm->vm_map->pmap`` in the old
one (vmspace plus ``uvm_share``); which one is chosen from the member names
in CTF, never from a release number.

Cross-checks, any disagreement raising :class:`~harness.errors.InfraError`:

* each vCPU on ``vm_vcpu_list`` has ``vc_parent`` == its VM;
* SVM/RVI (``vmm_softc->mode`` VMM_MODE_RVI): the VMCB at ``vc_control_pa``
  has nested paging enabled (``v_np_enable`` bit 0, offset 0x90) and its nCR3
  (``v_n_cr3``, offset 0xB0, AMD APM Appendix B) equals ``pm_pdirpa``
  (``vcpu_reset_regs_svm``);
* VMX/EPT (VMM_MODE_EPT): the pmap's cached ``eptp`` names ``pm_pdirpa`` with
  a 4-level walk and WB or UC memory type (``vcpu_init_vmx``);
* ``pm_type`` (when present) is PMAP_TYPE_RVI or PMAP_TYPE_EPT as the mode says.

Kernel virtual addresses are read through any ``read(addr, size)`` object;
:class:`DirectMapMem` translates OpenBSD amd64's direct map
(``PMAP_DIRECT_BASE``, L4 slots 507..510) and the kernel image (KERNBASE),
and refuses anything else.

>>> DirectMapMem.translate(PMAP_DIRECT_BASE + 0x5000)
20480
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from harness.ctf import Ctf
from harness.discovery.linux_kvm_common import KernelReader
from harness.discovery.vmcb import NCR3_ADDR_MASK, VMCB_CONTROL
from harness.errors import InfraError, MemoryReadError
from harness.mem import PAGE_SIZE, PhysMem, read_u64

__all__ = ["discover", "LiveVM", "VCpu", "VmMemRange", "DirectMapMem", "DirectMapOrVirt",
           "NEEDED_SYMBOLS",
           "PMAP_DIRECT_BASE", "PMAP_DIRECT_END", "KERNBASE", "VMM_MODE_EPT", "VMM_MODE_RVI",
           "VMM_MAX_MEM_RANGES", "DESIGN_NEW", "DESIGN_OLD"]

NEEDED_SYMBOLS = ("vmm_softc",)
# sys/arch/amd64/include/pmap.h: L4_SLOT_DIRECT 507, NUM_L4_SLOT_DIRECT 4, NBPD_L4 512 GiB
PMAP_DIRECT_BASE = 0xFFFF_FD80_0000_0000
PMAP_DIRECT_END = PMAP_DIRECT_BASE + 4 * (512 << 30)
KERNBASE = 0xFFFF_FFFF_8000_0000          # kernel image: PA = VA - KERNBASE [inferred]
VMM_MODE_UNKNOWN, VMM_MODE_EPT, VMM_MODE_RVI = 0, 1, 2    # vmmvar.h rev 1.115
PMAP_TYPE_NORMAL, PMAP_TYPE_EPT, PMAP_TYPE_RVI = 1, 2, 3  # amd64 pmap.h rev 1.94
VMM_MAX_MEM_RANGES = 16                   # vmm.h
MAX_VMS = 1 << 12                         # a longer list is a loop or garbage
MAX_VCPUS = 64                            # VMM_MAX_VCPUS_PER_VM
EPT_WALK_4 = 3 << 3                       # EPTP bits 5:3 = walk length - 1
EPT_MEMTYPES = (0x0, 0x6)                 # UC, WB
SVM_ENABLE_NP = 0x1
DESIGN_NEW = "vm_pmap"
DESIGN_OLD = "vm_map->pmap"
VM_MEM_TYPES = {0: "ram", 1: "reserved", 2: "mmio"}


class DirectMapMem:
    """Kernel virtual reads over physical memory: the direct map and the kernel image."""

    def __init__(self, pmem: PhysMem) -> None:
        self.pmem = pmem

    @staticmethod
    def translate(kva: int) -> int:
        """The PA behind *kva*; MemoryReadError outside the direct map and kernel image."""
        if PMAP_DIRECT_BASE <= kva < PMAP_DIRECT_END:
            return kva - PMAP_DIRECT_BASE
        if kva >= KERNBASE:
            return kva - KERNBASE
        raise MemoryReadError(kva, 0, "kernel address outside OpenBSD's direct map "
                              f"[{PMAP_DIRECT_BASE:#x}, {PMAP_DIRECT_END:#x}) and the "
                              f"kernel image (>= {KERNBASE:#x})")

    def read(self, addr: int, size: int) -> bytes:
        """*size* bytes at kernel virtual *addr*."""
        end = self.translate(addr + size - 1) if size else 0
        pa = self.translate(addr)
        if size and end - pa != size - 1:
            raise MemoryReadError(addr, size, "read crosses out of the direct map")
        return self.pmem.read(pa, size)


class DirectMapOrVirt:
    """Kernel virtual reads: the direct map through physical memory, anything else
    (``km_alloc``'d pool pages, the kernel image) through *virt*, the halted CPU's own
    translation (a live target's virtual reads)."""

    def __init__(self, pmem: PhysMem, virt: PhysMem) -> None:
        self.pmem = pmem
        self.virt = virt

    def read(self, addr: int, size: int) -> bytes:
        """*size* bytes at kernel virtual *addr*."""
        if PMAP_DIRECT_BASE <= addr and addr + size <= PMAP_DIRECT_END:
            return self.pmem.read(addr - PMAP_DIRECT_BASE, size)
        return self.virt.read(addr, size)


@dataclass(frozen=True)
class VmMemRange:
    """One ``struct vm_mem_range`` of ``vm->vm_memranges``."""

    index: int
    gpa: int              # vmr_gpa
    va: int               # vmr_va: where the creating process maps it
    size: int             # vmr_size
    type: int             # VM_MEM_RAM 0, VM_MEM_RESERVED 1, VM_MEM_MMIO 2

    @property
    def kind(self) -> str:
        return VM_MEM_TYPES.get(self.type, f"type {self.type}")


@dataclass(frozen=True)
class VCpu:
    """One ``struct vcpu`` of ``vm->vm_vcpu_list``."""

    id: int               # vc_id
    addr: int             # struct vcpu (kernel virtual)
    control_pa: int       # vc_control_pa: the VMCB (SVM) or VMCS (VMX)
    ncr3: int | None      # the VMCB's nCR3 as read; None on VMX


@dataclass(frozen=True)
class LiveVM:
    """A VM on ``vmm_softc->vm_list`` with its agreed nested root."""

    vm: int                            # struct vm (kernel virtual)
    id: int                            # vm_id
    name: str                          # vm_name
    creator_pid: int                   # vm_creator_pid
    design: str                        # DESIGN_NEW or DESIGN_OLD
    mode: int                          # VMM_MODE_EPT or VMM_MODE_RVI
    pmap: int                          # the nested struct pmap (kernel virtual)
    root: int                          # pm_pdirpa
    eptp: int | None                   # pmap->eptp (VMX), None on SVM
    memranges: tuple[VmMemRange, ...]
    memory_slots: tuple[int, ...]      # vm_memory_slot[i] (uao pointers); () in the old design
    vcpus: tuple[VCpu, ...]
    checks: Mapping[str, bool] = field(default_factory=dict)

    @property
    def format(self) -> str:
        """The nested table format: ``npt`` (RVI) or ``ept``."""
        return "ept" if self.mode == VMM_MODE_EPT else "npt"


def discover(kmem: PhysMem, pmem: PhysMem, syms: Mapping[str, int], ctf: Ctf, *,
             mem_size: int | None = None) -> list[LiveVM]:
    """Every VM on vmm's ``vm_list``, cross-checked; InfraError on disagreement.

    *kmem* reads kernel virtual addresses (e.g. :class:`DirectMapMem`), *pmem*
    physical ones; *syms* holds :data:`NEEDED_SYMBOLS` (from ``/bsd.booted``'s
    symbol table), *ctf* its ``.SUNW_ctf`` types; *mem_size* bounds physical
    addresses.
    """
    k = KernelReader(kmem, ctf)
    softc = read_u64(kmem, syms["vmm_softc"])
    if softc == 0:
        raise InfraError("vmm_softc is NULL: vmm(4) did not attach (no SVM/RVI or VMX/EPT?)")
    mode = k.field(softc, "struct vmm_softc", "mode")
    if mode not in (VMM_MODE_EPT, VMM_MODE_RVI):
        raise InfraError(f"vmm_softc {softc:#x}: mode {mode} is neither VMM_MODE_EPT (1) nor "
                         "VMM_MODE_RVI (2)")
    design = nested_pmap_design(ctf)
    ctx = _Context(k, pmem, mode, design, mem_size or (1 << 52))
    return [_live_vm(ctx, vm) for vm in vm_list(k, softc)]


def nested_pmap_design(ctf: Ctf) -> str:
    """DESIGN_NEW when ``struct vm`` has ``vm_pmap``, DESIGN_OLD when it has ``vm_map``."""
    names = ctf.member_names("struct vm")
    if "vm_pmap" in names:
        return DESIGN_NEW
    if "vm_map" in names:
        return DESIGN_OLD
    raise InfraError("struct vm has neither member 'vm_pmap' (the vm_pmap design) nor "
                     "'vm_map' (the vmspace design), so its nested pmap cannot be found; "
                     f"its members are: {', '.join(names)}")


def vm_list(k: KernelReader, softc: int) -> Iterator[int]:
    """Each ``struct vm`` on ``vmm_softc->vm_list`` (SLIST), head first."""
    yield from _slist(k, k.field(softc, "struct vmm_softc", "vm_list.slh_first"),
                      "struct vm", "vm_link.sle_next", MAX_VMS, f"vmm_softc {softc:#x} vm_list")


def _slist(k: KernelReader, first: int, type_: str, link: str, limit: int,
           what: str) -> Iterator[int]:
    """Entries of an SLIST from *first*, following *link*; a loop or overlong list raises."""
    seen: set[int] = set()
    node = first
    while node:
        if node in seen or len(seen) >= limit:
            raise InfraError(f"{what}: {type_} {node:#x} seen twice or more than {limit} "
                             "entries (a loop or a stale list)")
        seen.add(node)
        yield node
        node = k.field(node, type_, link)


@dataclass(frozen=True)
class _Context:
    k: KernelReader
    pmem: PhysMem
    mode: int
    design: str
    mem_size: int


def _live_vm(ctx: _Context, vm: int) -> LiveVM:
    """One ``struct vm``: identity, nested pmap, ranges, vCPUs, cross-checks."""
    k = ctx.k
    checks: dict[str, bool] = {}
    pmap = _nested_pmap(k, vm, ctx.design)
    root = k.field(pmap, "struct pmap", "pm_pdirpa")
    where = f"vm {vm:#x} (vm_id {k.field(vm, 'struct vm', 'vm_id')})"
    if not root or root % PAGE_SIZE or root >= ctx.mem_size:
        raise InfraError(f"{where}: pm_pdirpa {root:#x} is not a page below {ctx.mem_size:#x}")
    _check_pm_type(ctx, pmap, where, checks)
    eptp = _check_eptp(ctx, pmap, root, where, checks) if ctx.mode == VMM_MODE_EPT else None
    vcpus = tuple(_vcpu(ctx, vm, v, root, where, checks)
                  for v in _slist(k, k.field(vm, "struct vm", "vm_vcpu_list.slh_first"),
                                  "struct vcpu", "vc_vcpu_link.sle_next", MAX_VCPUS,
                                  f"{where} vm_vcpu_list"))
    return LiveVM(vm=vm, id=k.field(vm, "struct vm", "vm_id"), name=_name(k, vm),
                  creator_pid=k.field(vm, "struct vm", "vm_creator_pid"), design=ctx.design,
                  mode=ctx.mode, pmap=pmap, root=root, eptp=eptp,
                  memranges=tuple(memranges(k, vm)), memory_slots=_slots(k, vm, ctx.design),
                  vcpus=vcpus, checks=checks)


def _nested_pmap(k: KernelReader, vm: int, design: str) -> int:
    """``vm->vm_pmap`` or ``vm->vm_map->pmap``; a NULL pointer raises."""
    if design == DESIGN_NEW:
        pmap = k.field(vm, "struct vm", "vm_pmap")
    else:
        vm_map = k.field(vm, "struct vm", "vm_map")
        if vm_map == 0:
            raise InfraError(f"vm {vm:#x}: vm_map is NULL")
        pmap = k.field(vm_map, "struct vm_map", "pmap")
    if pmap == 0:
        raise InfraError(f"vm {vm:#x}: nested pmap ({design}) is NULL")
    return pmap


def memranges(k: KernelReader, vm: int) -> Iterator[VmMemRange]:
    """``vm->vm_memranges[0 .. vm_nmemranges)``."""
    n = k.field(vm, "struct vm", "vm_nmemranges")
    if not 0 < n <= VMM_MAX_MEM_RANGES:
        raise InfraError(f"vm {vm:#x}: vm_nmemranges {n} outside 1..{VMM_MAX_MEM_RANGES}")
    for i in range(n):
        base = k.addr_of(vm, "struct vm", f"vm_memranges[{i}]")

        def f(name: str, base: int = base) -> int:
            return k.field(base, "struct vm_mem_range", name)

        yield VmMemRange(i, f("vmr_gpa"), f("vmr_va"), f("vmr_size"), f("vmr_type"))


def _slots(k: KernelReader, vm: int, design: str) -> tuple[int, ...]:
    """``vm_memory_slot[i]`` for each range (new design only)."""
    if design != DESIGN_NEW:
        return ()
    n = k.field(vm, "struct vm", "vm_nmemranges")
    return tuple(k.field(vm, "struct vm", f"vm_memory_slot[{i}]") for i in range(n))


def _name(k: KernelReader, vm: int) -> str:
    """``vm->vm_name`` up to its NUL."""
    off = k.btf.offsetof("struct vm", "vm_name")
    raw = k.kmem.read(vm + off, k.btf.sizeof(k.btf.member_type("struct vm", "vm_name")))
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _check_pm_type(ctx: _Context, pmap: int, where: str, checks: dict[str, bool]) -> None:
    """``pm_type`` agrees with the mode (when the kernel's pmap has the member)."""
    if not ctx.k.has("struct pmap", "pm_type"):
        return
    want = PMAP_TYPE_EPT if ctx.mode == VMM_MODE_EPT else PMAP_TYPE_RVI
    got = ctx.k.field(pmap, "struct pmap", "pm_type")
    if got != want:
        raise InfraError(f"{where}: nested pmap {pmap:#x} has pm_type {got}, expected {want} "
                         f"for vmm mode {ctx.mode}")
    checks["pm_type matches vmm mode"] = True


def _check_eptp(ctx: _Context, pmap: int, root: int, where: str,
                checks: dict[str, bool]) -> int:
    """``pmap->eptp`` = pm_pdirpa | 4-level walk | UC or WB memory type."""
    eptp = ctx.k.field(pmap, "struct pmap", "eptp")
    if eptp & NCR3_ADDR_MASK != root or eptp & 0x38 != EPT_WALK_4 \
            or eptp & 0x7 not in EPT_MEMTYPES:
        raise InfraError(f"{where}: pmap->eptp {eptp:#x} does not name pm_pdirpa {root:#x} "
                         "with a 4-level walk and UC/WB memory type")
    checks["eptp == pm_pdirpa | walk 4 | memtype"] = True
    return eptp


def _vcpu(ctx: _Context, vm: int, vcpu: int, root: int, where: str,
          checks: dict[str, bool]) -> VCpu:
    """One vCPU; on SVM its VMCB's nCR3 must be the VM's pm_pdirpa."""
    k = ctx.k
    parent = k.field(vcpu, "struct vcpu", "vc_parent")
    if parent != vm:
        raise InfraError(f"{where}: vcpu {vcpu:#x} on vm_vcpu_list has vc_parent {parent:#x}")
    pa = k.field(vcpu, "struct vcpu", "vc_control_pa")
    vid = k.field(vcpu, "struct vcpu", "vc_id")
    if not pa or pa % PAGE_SIZE or pa >= ctx.mem_size:
        raise InfraError(f"{where} vcpu {vid}: vc_control_pa {pa:#x} is not a page in RAM")
    if ctx.mode == VMM_MODE_EPT:
        return VCpu(vid, vcpu, pa, None)
    ncr3 = _vmcb_ncr3(ctx, pa, f"{where} vcpu {vid} VMCB {pa:#x}")
    if ncr3 & NCR3_ADDR_MASK != root:
        raise InfraError(f"{where} vcpu {vid}: VMCB nCR3 {ncr3:#x} != pm_pdirpa {root:#x}")
    checks["vmcb nCR3 == pm_pdirpa"] = True
    return VCpu(vid, vcpu, pa, ncr3)


def _vmcb_ncr3(ctx: _Context, pa: int, where: str) -> int:
    """The nCR3 of the VMCB at *pa*, which must have nested paging enabled."""
    np_off, np_size = VMCB_CONTROL["nested_ctl"]
    cr3_off, cr3_size = VMCB_CONTROL["nested_cr3"]
    np_enable = int.from_bytes(ctx.pmem.read(pa + np_off, np_size), "little")
    if not np_enable & SVM_ENABLE_NP:
        raise InfraError(f"{where}: v_np_enable {np_enable:#x} has nested paging off")
    return int.from_bytes(ctx.pmem.read(pa + cr3_off, cr3_size), "little")
