"""Live KVM VMs and their stage-2 roots in an arm64 L1 Linux (VHE or nVHE).

Every offset comes from vmlinux's BTF (KVM is built in on arm64, so there is
no module BTF).  Debian's arm64 kernels have ``CONFIG_KALLSYMS_ALL`` off, so
``/proc/kallsyms`` lists functions only, and their ``System.map`` is a stub:
``vm_list`` is found from the code of ``vm_stat_get`` (which walks it), as
the ``ADRP``/``ADD`` pairs there that address a valid circular list head
(:func:`find_vm_list`; ``kvm_lock``, the other one, is a mutex).  Then:

``vm_list`` -> each ``struct kvm`` -> ``userspace_pid``, the memslots (read
like the x86 discovery does, :mod:`harness.discovery.linux_kvm_common`) and
``arch.mmu`` (``struct kvm_s2_mmu``: ``vmid.id``, ``pgd_phys``, ``pgt``) ->
``struct kvm_pgtable`` (``ia_bits``, ``start_level``, ``pgd``, ``mmu``).

Cross-checks, each raising :class:`~harness.errors.InfraError` with both
values when it fails:

* ``pgt->mmu == &kvm->arch.mmu`` (the table belongs to this VM);
* ``pgt->pgd`` (kernel virtual) translates to ``mmu.pgd_phys``: by an
  independent translation when one is given (the observer asks QEMU's
  ``gva2gpa``), else by reading the root through both and comparing;
* the VM's own ``VTCR_EL2`` value (``kvm->arch.vtcr`` in 6.1, ``mmu.vtcr``
  in later kernels) gives the same IPA size and start level as the
  ``kvm_pgtable`` (:func:`~harness.formats.stage2.from_vtcr`);
* ``VTTBR_EL2`` (when given): under VHE it keeps the last VM loaded, so its
  BADDR (``vttbr & 0x0000fffffffffffe``) must be the ``pgd_phys`` of exactly
  one live VM, whose ``kvm_vmid`` agrees in VMID bits 7:0, and the
  ``VTCR_EL2`` register then gives that VM's walk parameters.  Under nVHE KVM
  zeroes ``VTTBR_EL2`` on every exit: the check is recorded as not available
  (None), as it is when no VM is live.

Only ``vm_list`` members are reported: the tables of closed VMs are freed
with them and never show up.

>>> [hex(a) for a in adrp_targets(bytes.fromhex("b3010090 73c20291"), 0xffff800008010000)]
['0xffff8000080440b0']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from harness.discovery.linux_kvm_common import (
    KernelReader,
    MemSlot,
    creator_tgid,
    read_memslots,
)
from harness.discovery.linux_lists import list_for_each_entry
from harness.errors import InfraError, MemoryReadError
from harness.formats.stage2 import VTTBR_BADDR, Stage2Params, from_vtcr
from harness.ktypes import KernelTypes
from harness.mem import PAGE_SIZE, PhysMem, read_u64

__all__ = ["discover", "LiveVM", "Stage2Root", "MemSlot", "NEEDED_SYMBOLS", "BTF_MODULES",
           "VA_BITS", "lm_to_phys", "vttbr_baddr", "vttbr_vmid", "find_vm_list",
           "adrp_targets"]

NEEDED_SYMBOLS = ("vm_list", "vm_stat_get")   # vm_list only with CONFIG_KALLSYMS_ALL
MAX_FUNCTION = 1024                   # bytes of vm_stat_get read, up to its first RET
A64_RET = 0xD65F03C0
BTF_MODULES: tuple[str, ...] = ()     # CONFIG_KVM=y: vmlinux's BTF has every type
VA_BITS = 48                          # CONFIG_ARM64_VA_BITS of Debian's arm64 kernels
U64 = (1 << 64) - 1
CHECK_VTTBR = "VTTBR_EL2 BADDR == pgd_phys (last VM loaded)"
CHECK_VTCR_REG = "VTCR_EL2 register walk parameters == kvm_pgtable"


@dataclass(frozen=True)
class Stage2Root:
    """A VM's stage-2 table as KVM describes it (``struct kvm_s2_mmu`` + ``kvm_pgtable``)."""

    mmu: int              # &kvm->arch.mmu (kernel virtual)
    pgt: int              # mmu->pgt (kernel virtual)
    pgd: int              # pgt->pgd (kernel virtual, linear map)
    pgd_phys: int         # mmu->pgd_phys: what VTTBR_EL2.BADDR holds for this VM
    ia_bits: int          # pgt->ia_bits: IPA size
    start_level: int      # pgt->start_level: arm level of the (concatenated) root
    vtcr: int             # the VM's VTCR_EL2 value (kvm->arch.vtcr or mmu->vtcr)
    vmid: int             # mmu->vmid.id (generation and VMID)


@dataclass(frozen=True)
class LiveVM:
    """A VM on ``vm_list`` with its agreed stage-2 root and the checks that passed."""

    kvm: int                          # struct kvm (kernel virtual; vmalloc under VHE)
    pid: int                          # kvm->userspace_pid: the creating thread's id
    memslots: tuple[MemSlot, ...]
    stage2: Stage2Root
    checks: Mapping[str, bool | None] = field(default_factory=dict)  # None: not available
    tgid: int | None = None           # kvm->mm->owner->tgid: the owning process's id

    @property
    def root(self) -> int:
        """Physical address of the stage-2 root (``pgd_phys``)."""
        return self.stage2.pgd_phys

    @property
    def params(self) -> Stage2Params:
        """The walk parameters KVM uses (``ia_bits``, ``start_level``)."""
        return Stage2Params(self.stage2.ia_bits, self.stage2.start_level)


def lm_to_phys(va: int, memstart_addr: int, va_bits: int = VA_BITS) -> int:
    """arm64 ``__lm_to_phys``: a linear-map address to its physical address."""
    page_offset = U64 & -(1 << va_bits)
    return ((va & ~page_offset) + memstart_addr) & U64


def vttbr_baddr(vttbr: int) -> int:
    """VTTBR_EL2.BADDR: the root's physical address (VMID bits 63:48 and CnP dropped)."""
    return vttbr & VTTBR_BADDR


def vttbr_vmid(vttbr: int) -> int:
    """VTTBR_EL2.VMID (bits 63:48)."""
    return vttbr >> 48


def adrp_targets(code: bytes, pc: int) -> list[int]:
    """Addresses formed from an ``ADRP`` base in *code* (little-endian A64 at *pc*).

    Follows the base through ``ADD Xd, Xn, #imm``, ``MOV Xd, Xn`` and loads
    (``LDR Xt, [Xn, #imm]`` and the pre-indexed ``LDR Xt, [Xn, #imm]!`` that
    GCC emits for ``list_for_each_entry(.., &vm_list, ..)`` next to
    ``kvm_lock``); every address formed or loaded from is returned.  Decoding
    stops at the first RET.
    """
    regs: dict[int, int] = {}
    out = []
    for i in range(0, len(code) - 3, 4):
        insn, at = int.from_bytes(code[i:i + 4], "little"), pc + i
        if insn == A64_RET:
            break
        rd, rn = insn & 31, (insn >> 5) & 31
        if insn & 0x9F000000 == 0x90000000:                   # ADRP
            imm = ((insn >> 5) & 0x7FFFF) << 2 | (insn >> 29) & 3
            imm -= (imm >> 20) << 21                          # sign-extend 21 bits
            regs[rd] = ((at & ~0xFFF) + (imm << 12)) & U64
        elif insn & 0xFF800000 == 0x91000000 and rn in regs:  # ADD (immediate), 64-bit
            shift = 12 if insn >> 22 & 1 else 0
            regs[rd] = regs[rn] + (((insn >> 10) & 0xFFF) << shift)
            out.append(regs[rd])
        elif insn & 0xFFE0FFE0 == 0xAA0003E0 and (insn >> 16) & 31 in regs:  # MOV Xd, Xm
            regs[rd] = regs[(insn >> 16) & 31]
        elif insn & 0xFFC00000 == 0xF9400000 and rn in regs:  # LDR Xt, [Xn, #imm]
            out.append(regs[rn] + ((insn >> 10) & 0xFFF) * 8)
            regs.pop(rd, None)
        elif insn & 0xFFE00C00 == 0xF8400C00 and rn in regs:  # LDR Xt, [Xn, #imm]!
            imm9 = (insn >> 12) & 0x1FF
            regs[rn] += imm9 - ((imm9 >> 8) << 9)
            out.append(regs[rn])
            regs.pop(rd, None)
    return out       # stale register values only add candidates; callers validate them


def _is_list_head(kmem: PhysMem, head: int) -> bool:
    """``head->next->prev == head`` and ``head->prev->next == head`` (no NULL)."""
    try:
        nxt, prev = read_u64(kmem, head), read_u64(kmem, head + 8)
        return bool(nxt and prev) and read_u64(kmem, nxt + 8) == head \
            and read_u64(kmem, prev) == head
    except MemoryReadError:     # a candidate address that maps nothing; a lost GDB raises
        return False


def find_vm_list(kmem: PhysMem, syms: Mapping[str, int]) -> int:
    """``&vm_list``: from kallsyms if listed, else from the code of ``vm_stat_get``."""
    if "vm_list" in syms:
        return syms["vm_list"]
    func = syms["vm_stat_get"]
    heads = sorted({a for a in adrp_targets(kmem.read(func, MAX_FUNCTION), func)
                    if _is_list_head(kmem, a)})
    if len(heads) != 1:
        raise InfraError(f"vm_stat_get at {func:#x}: {len(heads)} list heads addressed "
                         f"({', '.join(hex(h) for h in heads) or 'none'}), expected one "
                         "(vm_list)")
    return heads[0]


def discover(kmem: PhysMem, pmem: PhysMem, syms: Mapping[str, int], btf: KernelTypes, *,
             vttbr: int | None = None, vtcr: int | None = None,
             mem_size: int | None = None,
             virt_to_phys: Callable[[int], int] | None = None) -> list[LiveVM]:
    """Every VM on KVM's ``vm_list``, cross-checked; raises InfraError on disagreement.

    *kmem* reads kernel virtual addresses (L1 halted outside guest mode),
    *pmem* physical ones; *syms* holds :data:`NEEDED_SYMBOLS`.  *vttbr* and
    *vtcr* are the ``VTTBR_EL2`` / ``VTCR_EL2`` register values (None: not
    read), *mem_size* the end of L1 RAM; *virt_to_phys* translates a kernel
    virtual address independently (None: compare the root's bytes instead).
    """
    k = KernelReader(kmem, btf)
    head = find_vm_list(kmem, syms)
    vms = [_live_vm(k, pmem, kvm, virt_to_phys, mem_size)
           for kvm in list_for_each_entry(kmem, btf, head, "struct kvm", "vm_list")]
    return _check_registers(vms, vttbr, vtcr)


def _live_vm(k: KernelReader, pmem: PhysMem, kvm: int,
             virt_to_phys: Callable[[int], int] | None, mem_size: int | None) -> LiveVM:
    """Read one ``struct kvm`` and check its stage-2 description."""
    checks: dict[str, bool | None] = {}
    s2 = _stage2(k, kvm, checks)
    _check_pgd(k, pmem, kvm, s2, virt_to_phys, checks)
    _check_root(pmem, kvm, s2, mem_size, checks)
    return LiveVM(kvm=kvm, pid=k.field(kvm, "struct kvm", "userspace_pid"),
                  memslots=tuple(read_memslots(k, kvm)), stage2=s2, checks=checks,
                  tgid=creator_tgid(k, kvm))


def _stage2(k: KernelReader, kvm: int, checks: dict[str, bool | None]) -> Stage2Root:
    """``kvm->arch.mmu`` and its ``kvm_pgtable``, with the cross-pointer."""
    mmu = k.addr_of(kvm, "struct kvm", "arch.mmu")
    pgt = k.field(mmu, "struct kvm_s2_mmu", "pgt")
    if pgt == 0:
        raise InfraError(f"kvm {kvm:#x}: arch.mmu.pgt is NULL on a VM on vm_list")
    back = k.field(pgt, "struct kvm_pgtable", "mmu")
    if back != mmu:
        raise InfraError(f"kvm {kvm:#x}: kvm_pgtable {pgt:#x} has mmu {back:#x}, "
                         f"not &kvm->arch.mmu {mmu:#x}")
    checks["kvm_pgtable.mmu == &kvm->arch.mmu"] = True
    return Stage2Root(mmu=mmu, pgt=pgt, pgd=k.field(pgt, "struct kvm_pgtable", "pgd"),
                      pgd_phys=k.field(mmu, "struct kvm_s2_mmu", "pgd_phys"),
                      ia_bits=k.field(pgt, "struct kvm_pgtable", "ia_bits"),
                      start_level=k.field(pgt, "struct kvm_pgtable", "start_level"),
                      vtcr=_vm_vtcr(k, kvm, mmu),
                      vmid=k.field(mmu, "struct kvm_s2_mmu", "vmid.id.counter"))


def _check_pgd(k: KernelReader, pmem: PhysMem, kvm: int, s2: Stage2Root,
               virt_to_phys: Callable[[int], int] | None,
               checks: dict[str, bool | None]) -> None:
    """``pgt->pgd`` (virtual) is ``mmu->pgd_phys``: translated, or the same bytes."""
    if virt_to_phys is not None:
        pa = virt_to_phys(s2.pgd)
        if pa != s2.pgd_phys:
            raise InfraError(f"kvm {kvm:#x}: kvm_pgtable.pgd {s2.pgd:#x} translates to "
                             f"{pa:#x}, kvm_s2_mmu.pgd_phys is {s2.pgd_phys:#x}")
        checks["kvm_pgtable.pgd translates to kvm_s2_mmu.pgd_phys"] = True
        return
    if k.kmem.read(s2.pgd, PAGE_SIZE) != pmem.read(s2.pgd_phys, PAGE_SIZE):
        raise InfraError(f"kvm {kvm:#x}: kvm_pgtable.pgd {s2.pgd:#x} and kvm_s2_mmu.pgd_phys "
                         f"{s2.pgd_phys:#x} hold different bytes")
    checks["kvm_pgtable.pgd and kvm_s2_mmu.pgd_phys hold the same bytes"] = True


def _vm_vtcr(k: KernelReader, kvm: int, mmu: int) -> int:
    """The VM's VTCR_EL2 value: ``mmu->vtcr`` where it exists, else ``kvm->arch.vtcr``."""
    if k.has("struct kvm_s2_mmu", "vtcr"):
        return k.field(mmu, "struct kvm_s2_mmu", "vtcr")
    return k.field(kvm, "struct kvm", "arch.vtcr")


def _walk_params(vtcr: int, what: str) -> tuple[int, int]:
    """(ia_bits, start_level) of a VTCR_EL2 value; InfraError if it is not usable."""
    try:
        p = from_vtcr(vtcr)
    except ValueError as exc:
        raise InfraError(f"{what} {vtcr:#x}: {exc}") from exc
    return p.ia_bits, p.start_level


def _check_root(pmem: PhysMem, kvm: int, s2: Stage2Root, mem_size: int | None,
                checks: dict[str, bool | None]) -> None:
    """The VM's VTCR agrees with its kvm_pgtable; the root is page aligned, in RAM."""
    mine = (s2.ia_bits, s2.start_level)
    theirs = _walk_params(s2.vtcr, f"kvm {kvm:#x}: the VM's VTCR_EL2")
    if theirs != mine:
        raise InfraError(f"kvm {kvm:#x}: the VM's VTCR_EL2 {s2.vtcr:#x} gives (ia_bits, "
                         f"start_level) {theirs}, its kvm_pgtable says {mine}")
    checks["the VM's VTCR_EL2 == kvm_pgtable (ia_bits, start_level)"] = True
    try:
        Stage2Params(*mine)
    except ValueError as exc:
        raise InfraError(f"kvm {kvm:#x}: kvm_pgtable {s2.pgt:#x}: {exc}") from exc
    if s2.pgd_phys % PAGE_SIZE or (mem_size is not None and s2.pgd_phys >= mem_size):
        raise InfraError(f"kvm {kvm:#x}: pgd_phys {s2.pgd_phys:#x} is not a page in RAM")
    pmem.read(s2.pgd_phys, 8)     # raises if the root is not in L1 RAM


def _check_registers(vms: list[LiveVM], vttbr: int | None,
                     vtcr: int | None) -> list[LiveVM]:
    """VTTBR_EL2 names exactly one live VM (if it names any); VTCR_EL2 agrees with it."""
    baddr = None if vttbr is None else vttbr_baddr(vttbr)
    if vttbr is None or not vms or not baddr:   # not read, no VM, or nVHE's zero after exit
        return [_with(vm, {CHECK_VTTBR: None, CHECK_VTCR_REG: None}) for vm in vms]
    hits = [vm for vm in vms if vm.root == baddr]
    if len(hits) != 1:
        roots = ", ".join(f"kvm {vm.kvm:#x}: {vm.root:#x}" for vm in vms)
        raise InfraError(f"VTTBR_EL2 {vttbr:#x} (BADDR {baddr:#x}) matches {len(hits)} live "
                         f"VMs' pgd_phys, expected exactly one ({roots})")
    hit = hits[0]
    _check_vmid(hit, vttbr)
    if vtcr is not None:
        _check_vtcr_register(hit, vtcr)
    return [_with(vm, {CHECK_VTTBR: vm is hit or None,
                       CHECK_VTCR_REG: (vtcr is not None and vm is hit) or None})
            for vm in vms]


def _check_vmid(vm: LiveVM, vttbr: int) -> None:
    """VTTBR_EL2.VMID and ``kvm_vmid.id`` agree in the bits any VMID width has (7:0)."""
    if vttbr_vmid(vttbr) & 0xFF != vm.stage2.vmid & 0xFF:
        raise InfraError(f"kvm {vm.kvm:#x}: VTTBR_EL2 {vttbr:#x} has VMID "
                         f"{vttbr_vmid(vttbr):#x}, kvm_s2_mmu.vmid.id is {vm.stage2.vmid:#x}")


def _check_vtcr_register(vm: LiveVM, vtcr: int) -> None:
    """The VTCR_EL2 register gives the walk parameters of the VM VTTBR_EL2 names."""
    theirs = _walk_params(vtcr, "VTCR_EL2")
    mine = (vm.stage2.ia_bits, vm.stage2.start_level)
    if theirs != mine:
        raise InfraError(f"kvm {vm.kvm:#x}: VTCR_EL2 {vtcr:#x} gives (ia_bits, start_level) "
                         f"{theirs}, its kvm_pgtable says {mine}")


def _with(vm: LiveVM, extra: dict[str, bool | None]) -> LiveVM:
    """*vm* with *extra* checks added."""
    return LiveVM(kvm=vm.kvm, pid=vm.pid, memslots=vm.memslots, stage2=vm.stage2,
                  checks={**vm.checks, **extra}, tgid=vm.tgid)
