"""Live FreeBSD bhyve VMs and their nested roots, read from L1 kernel memory with CTF.

A bhyve VM is a character device ``/dev/vmm/<name>`` whose ``si_drv1`` is vmm.ko's
``struct vmmdev_softc`` (``vmmdev_create``: ``mda_si_drv1 = sc``).  The kernel's
devfs keeps every cdev on ``cdevp_list`` (``fs/devfs/devfs_devs.c``, a static
``TAILQ_HEAD(, cdev_priv)`` of ``struct cdev_priv``, whose first member is the cdev),
so the walk needs one kernel symbol and no address inside vmm.ko:

``cdevp_list`` -> each active ``struct cdev_priv`` named ``vmm/<name>`` ->
``si_drv1`` (``struct vmmdev_softc``) -> ``vm`` (``struct vm``, private to vmm.c) ->
the guest vmspace (``vm->vmspace`` in 14.x, ``vm->mem.mem_vmspace`` in 15.x, chosen by
the member names in CTF) -> its embedded ``struct pmap vm_pmap``: ``pm_pmltop`` (the
top table in the direct map), ``pm_type`` (PT_EPT 1, PT_RVI 2), ``pm_flags``.

The root the CPU uses comes from the backend's softc, ``vm->cookie``, and must name
the same page (``svm.c`` ``svm_init``: ``nptp = vtophys(pmap->pm_pmltop)``;
``vmx.c`` ``vmx_init``: ``eptp = EPTP(vtophys(pmap->pm_pmltop))``, ``ept.c``
``eptp()``: walk length 4, WB, bit 6 when the CPU keeps EPT A/D bits):

* SVM (``pm_type`` PT_RVI): ``struct svm_softc.nptp``; each vCPU's VMCB
  (``svm_vcpu.vmcb_pa``) has nested paging on (offset 0x90 bit 0) and nCR3 (0xB0) =
  ``nptp`` (``vmcb_init``);
* VMX (PT_EPT): ``struct vmx.eptp``; ``vmx.pmap`` is the vmspace's pmap.
  ``pm_flags & PMAP_EMULATE_AD_BITS`` (bit 9) says the pmap emulates A/D (the EPT
  walker's ``freebsd-emulated-ad`` flavour, and then EPTP bit 6 must be clear);
  ``PMAP_PDE_SUPERPAGE`` (bit 8) allows 2 MiB leaves.

Memory: ``mem_maps[]`` (gpa, len, segoff, segid, prot, flags; len 0 = unused) over
``mem_segs[]`` (len, sysmem, object); device segments are named by the softc's
``devmem`` list (``bootrom``, ``framebuffer``...): a system segment is kind ``ram``,
the boot ROM ``rom``, any other device segment ``device``.  ``pm_cr3`` of a nested
pmap is PMAP_NO_CR3 (``pmap_pinit_type`` sets it only for PT_X86) [inferred].

Any disagreement raises :class:`~harness.errors.InfraError`.  Kernel virtual
addresses are read through any ``read(addr, size)`` object
(:class:`FreeBsdKernelMem`: the direct map through physical memory, anything else
through the halted CPU's own translation).

>>> FreeBsdKernelMem.dmap_to_pa(DMAP_MIN_ADDRESS + 0x5000)
20480
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from harness.discovery.linux_kvm_common import KernelReader
from harness.discovery.vmcb import NCR3_ADDR_MASK, VMCB_CONTROL
from harness.errors import InfraError, MemoryReadError
from harness.ktypes import KernelTypes, TypeLookupError
from harness.mem import PAGE_SIZE, PhysMem, read_u64

__all__ = ["discover", "LiveVM", "BhyveMap", "BhyveSeg", "BhyveVCpu", "FreeBsdKernelMem",
           "NEEDED_SYMBOLS", "DMAP_MIN_ADDRESS", "DMAP_MAX_ADDRESS", "PT_EPT", "PT_RVI",
           "PMAP_EMULATE_AD_BITS", "PMAP_PDE_SUPERPAGE", "PMAP_NO_CR3", "CDP_ACTIVE",
           "vm_cdevs", "vmspace_member"]

NEEDED_SYMBOLS = ("cdevp_list",)
# amd64 vmparam.h without LA57: DMPML4I 496, NDMPML4E 8 -> 4 TiB of direct map
DMAP_MIN_ADDRESS = 0xFFFF_F800_0000_0000
DMAP_MAX_ADDRESS = 0xFFFF_FC00_0000_0000
PT_X86, PT_EPT, PT_RVI = 0, 1, 2                       # amd64 pmap.h enum pmap_type
PMAP_PDE_SUPERPAGE, PMAP_EMULATE_AD_BITS = 1 << 8, 1 << 9
PMAP_NO_CR3 = 0xFFFF_FFFF_FFFF_FFFF
CDP_ACTIVE = 1 << 0                                    # fs/devfs/devfs_int.h
VM_CDEV_PREFIX = "vmm/"
EPTP_WALK_4, EPTP_WB, EPTP_AD = 3 << 3, 6, 1 << 6      # ept.c eptp()
SVM_ENABLE_NP = 0x1
MAX_CDEVS = 1 << 16                                    # a longer list is a loop or garbage
MAX_DEVMEM = 64
VM_PROT_READ, VM_PROT_WRITE, VM_PROT_EXECUTE = 1, 2, 4


class FreeBsdKernelMem:
    """Kernel virtual reads: the direct map through physical memory, anything else
    (``malloc``'d structures above a page, vmm.ko's data) through *virt*, the halted
    CPU's own translation (a live target's virtual reads)."""

    def __init__(self, pmem: PhysMem, virt: PhysMem) -> None:
        self.pmem = pmem
        self.virt = virt

    @staticmethod
    def dmap_to_pa(kva: int) -> int:
        """The physical address behind a direct-map address; MemoryReadError otherwise."""
        if not DMAP_MIN_ADDRESS <= kva < DMAP_MAX_ADDRESS:
            raise MemoryReadError(kva, 0, f"not in FreeBSD's direct map [{DMAP_MIN_ADDRESS:#x},"
                                  f" {DMAP_MAX_ADDRESS:#x})")
        return kva - DMAP_MIN_ADDRESS

    def read(self, addr: int, size: int) -> bytes:
        """*size* bytes at kernel virtual *addr*."""
        if DMAP_MIN_ADDRESS <= addr and addr + size <= DMAP_MAX_ADDRESS:
            return self.pmem.read(addr - DMAP_MIN_ADDRESS, size)
        return self.virt.read(addr, size)


@dataclass(frozen=True)
class BhyveSeg:
    """One ``mem_segs[i]`` in use: a system or device memory segment."""

    segid: int
    len: int
    sysmem: bool
    object: int               # struct vm_object * (kernel virtual)
    name: str = ""            # a device segment's name (devmem_softc), "" for sysmem


@dataclass(frozen=True)
class BhyveMap:
    """One ``mem_maps[i]`` in use: [gpa, gpa + len) -> segment *segid* at *segoff*."""

    gpa: int
    len: int
    segoff: int
    segid: int
    prot: int                 # VM_PROT_READ 1 | WRITE 2 | EXECUTE 4
    flags: int                # VM_MEMMAP_F_WIRED 1, VM_MEMMAP_F_IOMMU 2
    kind: str                 # "ram" (sysmem), "rom" (the boot ROM), "device"
    seg_name: str = ""

    @property
    def prot_str(self) -> str:
        """``"rwx"``-style protection."""
        return "".join(c for c, bit in (("r", VM_PROT_READ), ("w", VM_PROT_WRITE),
                                        ("x", VM_PROT_EXECUTE)) if self.prot & bit)


@dataclass(frozen=True)
class BhyveVCpu:
    """One created vCPU: its id and, on SVM, its VMCB and nCR3 as read."""

    id: int
    addr: int                 # struct vcpu (kernel virtual)
    vmcb_pa: int | None       # svm_vcpu.vmcb_pa; None on VMX
    ncr3: int | None


@dataclass(frozen=True)
class LiveVM:
    """A bhyve VM found through ``/dev/vmm/<name>``, with its agreed nested root."""

    name: str
    cdev: int                 # struct cdev (kernel virtual)
    softc: int                # struct vmmdev_softc
    vm: int                   # struct vm
    backend: str              # "svm" or "vmx"
    pmap: int                 # the guest vmspace's struct pmap
    root: int                 # physical address of the top table
    eptp: int | None          # struct vmx.eptp (VMX), None on SVM
    emulate_ad: bool          # PMAP_EMULATE_AD_BITS
    superpages: bool          # PMAP_PDE_SUPERPAGE
    maps: tuple[BhyveMap, ...]
    segs: tuple[BhyveSeg, ...]
    vcpus: tuple[BhyveVCpu, ...]
    checks: Mapping[str, bool] = field(default_factory=dict)

    @property
    def format(self) -> str:
        """``npt`` (SVM/RVI) or ``ept`` (VMX)."""
        return "npt" if self.backend == "svm" else "ept"

    @property
    def ad_enabled(self) -> bool:
        """EPTP bit 6: the CPU keeps the EPT A/D bits."""
        return self.eptp is not None and bool(self.eptp & EPTP_AD)


def discover(kmem: PhysMem, pmem: PhysMem, syms: Mapping[str, int], types: KernelTypes, *,
             mem_size: int | None = None) -> list[LiveVM]:
    """Every bhyve VM on the devfs cdev list, cross-checked; InfraError on disagreement.

    *kmem* reads kernel virtual addresses (:class:`FreeBsdKernelMem`), *pmem*
    physical ones; *syms* holds :data:`NEEDED_SYMBOLS` (the kernel's ``.symtab``);
    *types* the kernel's and vmm.ko's CTF; *mem_size* bounds physical addresses.
    """
    k = KernelReader(kmem, types)
    limit = mem_size or (1 << 52)
    return [_live_vm(k, pmem, limit, name, cdev)
            for name, cdev in vm_cdevs(k, syms["cdevp_list"])]


def vm_cdevs(k: KernelReader, head: int) -> Iterator[tuple[str, int]]:
    """``(name, struct cdev)`` of every active ``vmm/<name>`` device on ``cdevp_list``.

    ``cdevp_list`` is an anonymous ``TAILQ_HEAD``: its ``tqh_first`` is the head's
    first pointer (``sys/queue.h``), read at the symbol itself.
    """
    seen: set[int] = set()
    node = read_u64(k.kmem, head)
    while node:
        if node in seen or len(seen) >= MAX_CDEVS:
            raise InfraError(f"cdevp_list: struct cdev_priv {node:#x} seen twice or more "
                             f"than {MAX_CDEVS} entries (a loop or a stale list)")
        seen.add(node)
        name = _cstring(k, node + k.btf.offsetof("struct cdev_priv", "cdp_c"),
                        "struct cdev", "si_name")
        flags = k.field(node, "struct cdev_priv", "cdp_flags")
        if name.startswith(VM_CDEV_PREFIX) and flags & CDP_ACTIVE:
            yield name[len(VM_CDEV_PREFIX):], node + k.btf.offsetof("struct cdev_priv",
                                                                    "cdp_c")
        node = k.field(node, "struct cdev_priv", "cdp_list.tqe_next")


def _cstring(k: KernelReader, addr: int, type_: str, member: str) -> str:
    """A ``char[]`` member up to its NUL."""
    size = k.btf.sizeof(k.btf.member_type(type_, member))
    raw = k.kmem.read(addr + k.btf.offsetof(type_, member), size)
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _cstring_at(k: KernelReader, ptr: int, limit: int = 64) -> str:
    """A NUL-terminated string a ``char *`` points at (at most *limit* bytes)."""
    if not ptr:
        return ""
    return k.kmem.read(ptr, limit).split(b"\0", 1)[0].decode("utf-8", "replace")


def vmspace_member(types: KernelTypes) -> str:
    """Where ``struct vm`` keeps its guest vmspace: ``vmspace`` (14.x) or
    ``mem.mem_vmspace`` (15.x, ``struct vm_mem``)."""
    for path in ("vmspace", "mem.mem_vmspace"):
        try:
            types.offsetof("struct vm", path)
        except TypeLookupError:
            continue
        return path
    raise InfraError("struct vm has neither 'vmspace' (FreeBSD 14) nor 'mem.mem_vmspace' "
                     "(FreeBSD 15): is vmm.ko's CTF loaded over the kernel's?")


def _mem_prefix(k: KernelReader) -> str:
    """``""`` when ``struct vm`` has ``mem_maps`` itself, ``"mem."`` for ``struct vm_mem``."""
    return "" if k.has("struct vm", "mem_maps") else "mem."


@dataclass
class _Vm:
    """What one VM's checks need along the way."""

    k: KernelReader
    pmem: PhysMem
    limit: int
    name: str
    vm: int
    where: str
    checks: dict[str, bool] = field(default_factory=dict)


def _live_vm(k: KernelReader, pmem: PhysMem, limit: int, name: str, cdev: int) -> LiveVM:
    """One VM behind the cdev ``vmm/<name>``."""
    softc = k.field(cdev, "struct cdev", "si_drv1")
    if not softc:
        raise InfraError(f"/dev/vmm/{name}: si_drv1 is NULL (the VM is being destroyed?)")
    if k.field(softc, "struct vmmdev_softc", "cdev") != cdev:
        raise InfraError(f"/dev/vmm/{name}: vmmdev_softc {softc:#x} names another cdev")
    vm = k.field(softc, "struct vmmdev_softc", "vm")
    v = _Vm(k, pmem, limit, name, vm, f"bhyve VM {name!r} (struct vm {vm:#x})")
    if _cstring(k, vm, "struct vm", "name") != name:
        raise InfraError(f"{v.where}: vm->name is "
                         f"{_cstring(k, vm, 'struct vm', 'name')!r}, not the device's name")
    v.checks["vm->name == /dev/vmm/<name>"] = True
    vmspace = k.field(vm, "struct vm", vmspace_member(k.btf))
    if not vmspace:
        raise InfraError(f"{v.where}: the guest vmspace is NULL")
    pmap = vmspace + k.btf.offsetof("struct vmspace", "vm_pmap")
    top = _pmap_root(v, pmap)
    pm_type = k.field(pmap, "struct pmap", "pm_type")
    pm_flags = k.field(pmap, "struct pmap", "pm_flags")
    cookie = k.field(vm, "struct vm", "cookie")
    if pm_type == PT_RVI:
        backend, root, eptp = "svm", _svm_root(v, cookie, top), None
    elif pm_type == PT_EPT:
        backend, eptp = "vmx", _vmx_eptp(v, cookie, pmap, top, pm_flags)
        root = top
    else:
        raise InfraError(f"{v.where}: guest pmap {pmap:#x} has pm_type {pm_type}, neither "
                         f"PT_EPT ({PT_EPT}) nor PT_RVI ({PT_RVI})")
    segs = _segs(k, vm, softc)
    return LiveVM(name=name, cdev=cdev, softc=softc, vm=vm, backend=backend, pmap=pmap,
                  root=root, eptp=eptp, emulate_ad=bool(pm_flags & PMAP_EMULATE_AD_BITS),
                  superpages=bool(pm_flags & PMAP_PDE_SUPERPAGE),
                  maps=tuple(_maps(k, vm, segs)), segs=tuple(segs.values()),
                  vcpus=tuple(_vcpus(v, backend, root)), checks=v.checks)


def _pmap_root(v: _Vm, pmap: int) -> int:
    """The physical address of ``pm_pmltop``; ``pm_cr3`` must be it or PMAP_NO_CR3."""
    k = v.k
    member = "pm_pmltop" if k.has("struct pmap", "pm_pmltop") else "pm_pml4"
    kva = k.field(pmap, "struct pmap", member)
    try:
        top = FreeBsdKernelMem.dmap_to_pa(kva)
    except MemoryReadError as exc:
        raise InfraError(f"{v.where}: {member} {kva:#x} is not a direct-map address") from exc
    if top % PAGE_SIZE or top >= v.limit:
        raise InfraError(f"{v.where}: {member} {kva:#x} is not a page below {v.limit:#x}")
    cr3 = k.field(pmap, "struct pmap", "pm_cr3") & 0xFFFF_FFFF_FFFF_FFFF
    if cr3 not in (top, PMAP_NO_CR3):
        raise InfraError(f"{v.where}: pm_cr3 {cr3:#x} is neither {member}'s page {top:#x} "
                         "nor PMAP_NO_CR3")
    return top


def _svm_root(v: _Vm, cookie: int, top: int) -> int:
    """``svm_softc.nptp``: the page ``pm_pmltop`` names, and the softc's VM is this one."""
    k = v.k
    if k.field(cookie, "struct svm_softc", "vm") != v.vm:
        raise InfraError(f"{v.where}: vm->cookie {cookie:#x} is not this VM's svm_softc")
    nptp = k.field(cookie, "struct svm_softc", "nptp")
    if nptp != top:
        raise InfraError(f"{v.where}: svm_softc.nptp {nptp:#x} != vtophys(pm_pmltop) "
                         f"{top:#x}")
    v.checks["svm_softc.nptp == vtophys(pm_pmltop)"] = True
    return top


def _vmx_eptp(v: _Vm, cookie: int, pmap: int, top: int, pm_flags: int) -> int:
    """``struct vmx.eptp``: names ``pm_pmltop``, 4 levels, WB; A/D only without emulation."""
    k = v.k
    if k.field(cookie, "struct vmx", "vm") != v.vm:
        raise InfraError(f"{v.where}: vm->cookie {cookie:#x} is not this VM's struct vmx")
    if k.has("struct vmx", "pmap") and k.field(cookie, "struct vmx", "pmap") != pmap:
        raise InfraError(f"{v.where}: vmx->pmap is not the guest vmspace's pmap {pmap:#x}")
    eptp = k.field(cookie, "struct vmx", "eptp")
    if eptp & NCR3_ADDR_MASK != top or eptp & 0x38 != EPTP_WALK_4 or eptp & 7 != EPTP_WB:
        raise InfraError(f"{v.where}: vmx->eptp {eptp:#x} does not name pm_pmltop's page "
                         f"{top:#x} with a 4-level walk and WB")
    if eptp & EPTP_AD and pm_flags & PMAP_EMULATE_AD_BITS:
        raise InfraError(f"{v.where}: EPTP {eptp:#x} enables hardware A/D bits, but the "
                         f"pmap emulates them (pm_flags {pm_flags:#x})")
    v.checks["vmx.eptp == EPTP(vtophys(pm_pmltop))"] = True
    return eptp


def _array_len(k: KernelReader, type_: str, path: str) -> int:
    """Elements of an array member, from its size and its first element's."""
    whole = k.btf.sizeof(k.btf.member_type(type_, path))
    return whole // k.btf.sizeof(k.btf.member_type(type_, f"{path}[0]"))


def _devmem_names(k: KernelReader, softc: int) -> dict[int, str]:
    """segid -> name of every device segment on the softc's ``devmem`` list."""
    names: dict[int, str] = {}
    node = k.field(softc, "struct vmmdev_softc", "devmem.slh_first")
    while node:
        if len(names) >= MAX_DEVMEM:
            raise InfraError(f"vmmdev_softc {softc:#x}: more than {MAX_DEVMEM} devmem "
                             "segments (a loop?)")
        names[k.field(node, "struct devmem_softc", "segid")] = _cstring_at(
            k, k.field(node, "struct devmem_softc", "name"))
        node = k.field(node, "struct devmem_softc", "link.sle_next")
    return names


def _segs(k: KernelReader, vm: int, softc: int) -> dict[int, BhyveSeg]:
    """segid -> segment, for every ``mem_segs[]`` entry with a length."""
    p = _mem_prefix(k)
    seg_type = "struct vm_mem_seg" if p else "struct mem_seg"
    names = _devmem_names(k, softc)
    out = {}
    for i in range(_array_len(k, "struct vm", f"{p}mem_segs")):
        base = k.addr_of(vm, "struct vm", f"{p}mem_segs[{i}]")
        length = k.field(base, seg_type, "len")
        if length:
            sysmem = bool(k.field(base, seg_type, "sysmem"))
            out[i] = BhyveSeg(i, length, sysmem, k.field(base, seg_type, "object"),
                              "" if sysmem else names.get(i, f"segment {i}"))
    return out


def _kind(seg: BhyveSeg | None) -> str:
    if seg is None:
        return "mmio"
    if seg.sysmem:
        return "ram"
    return "rom" if seg.name == "bootrom" else "device"


def _maps(k: KernelReader, vm: int, segs: Mapping[int, BhyveSeg]) -> Iterator[BhyveMap]:
    """Every ``mem_maps[]`` entry in use, with its segment's kind."""
    p = _mem_prefix(k)
    map_type = "struct vm_mem_map" if p else "struct mem_map"
    for i in range(_array_len(k, "struct vm", f"{p}mem_maps")):
        base = k.addr_of(vm, "struct vm", f"{p}mem_maps[{i}]")

        def f(name: str, base: int = base) -> int:
            return k.field(base, map_type, name)

        if f("len"):
            seg = segs.get(f("segid"))
            yield BhyveMap(f("gpa"), f("len"), f("segoff"), f("segid"), f("prot"), f("flags"),
                           _kind(seg), seg.name if seg else "")


def _vcpus(v: _Vm, backend: str, root: int) -> Iterator[BhyveVCpu]:
    """The created vCPUs (``vm->vcpu[0 .. maxcpus)``, NULL until created); on SVM
    each VMCB must have nested paging on with nCR3 = the root."""
    k = v.k
    array = k.field(v.vm, "struct vm", "vcpu")
    count = k.field(v.vm, "struct vm", "maxcpus")
    for i in range(count if array else 0):
        vcpu = read_u64(k.kmem, array + 8 * i)
        if not vcpu:
            continue
        cookie = k.field(vcpu, "struct vcpu", "cookie")
        if backend != "svm":
            yield BhyveVCpu(i, vcpu, None, None)
            continue
        vmcb = k.field(cookie, "struct svm_vcpu", "vmcb_pa")
        if not vmcb or vmcb % PAGE_SIZE or vmcb >= v.limit:
            raise InfraError(f"{v.where} vcpu {i}: vmcb_pa {vmcb:#x} is not a page in RAM")
        ncr3 = _vmcb_ncr3(v.pmem, vmcb, f"{v.where} vcpu {i} VMCB {vmcb:#x}")
        if ncr3 & NCR3_ADDR_MASK != root:
            raise InfraError(f"{v.where} vcpu {i}: VMCB nCR3 {ncr3:#x} != nptp {root:#x}")
        v.checks["vmcb nCR3 == nptp"] = True
        yield BhyveVCpu(i, vcpu, vmcb, ncr3)


def _vmcb_ncr3(pmem: PhysMem, pa: int, where: str) -> int:
    """The nCR3 of the VMCB at *pa*, which must have nested paging enabled."""
    np_off, np_size = VMCB_CONTROL["nested_ctl"]
    cr3_off, cr3_size = VMCB_CONTROL["nested_cr3"]
    np_enable = int.from_bytes(pmem.read(pa + np_off, np_size), "little")
    if not np_enable & SVM_ENABLE_NP:
        raise InfraError(f"{where}: np_enable {np_enable:#x} has nested paging off")
    return int.from_bytes(pmem.read(pa + cr3_off, cr3_size), "little")
