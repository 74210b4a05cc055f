"""DragonFly vkernel regions in L1 kernel memory: every ``MAP_VPAGETABLE`` map entry, its
master PDE, its memory image's resident pages and the host pmap that maps it.

A vkernel (or slat-workload's stand-in for one) is a user process of the L1 kernel.
Its memory image is a file mapped ``MAP_VPAGETABLE``; the L1 kernel translates
faults in that range through the VPTEs kept in the file, starting from the entry's
master PDE (:mod:`harness.formats.vpte`), and enters the result in the process's
own pmap.  Discovery reads, by DWARF offsets (DragonFly has no CTF:
:mod:`harness.dwarf`), in the halted L1:

* the process table: ``allprocs[ALLPROC_HSIZE]`` (``kern/kern_proc.c`` 5.x+, 256
  ``LIST_HEAD``s of ``struct proc`` through ``p_list``) or, where the lists are
  grouped, ``procglob[i].allproc``;
* per process, ``p_vmspace`` and, for a vkernel, ``p_vkernel`` (``struct
  vkernel_proc``): its ``root`` RB tree of ``struct vmspace_entry`` (``id``,
  ``vmspace``), the vmspaces made by ``vmspace_create()``;
* per vmspace, the map entries: the ``vm_map.rb_root`` RB tree (6.x) through
  ``rb_entry``, or the older ``header.next`` list; an entry with ``maptype ==
  VM_MAPTYPE_VPAGETABLE`` (2, [inferred] ``sys/vm/vm.h``) gives ``[start, end)``
  (``ba.start``/``ba.end``, older ``start``/``end``), ``aux.master_pde``, the
  object (``ba.object``, older ``object.vm_object``) and its offset, ``protection``;
* the object's resident pages: its ``rb_memq`` RB tree of ``struct vm_page``
  (``pindex``, ``phys_addr``): the memory image as L1 physical pages;
* the vmspace's pmap (``vm_pmap``, embedded): ``pm_pml4`` (a kernel virtual
  address) translated to physical by *kva_to_pa* (the halted CPU's translation).

Everything else is cross-checked and recorded: the entry inside its map's bounds,
page-aligned, the object non-NULL, the image offset 0 (the model reads the image
from its first page), the root a page below the memory size.

>>> VM_MAPTYPE_VPAGETABLE, ALLPROC_HSIZE
(2, 256)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from harness.discovery.linux_kvm_common import KernelReader
from harness.errors import InfraError, MemoryReadError
from harness.mem import PAGE_SIZE

__all__ = ["VM_MAPTYPE_VPAGETABLE", "ALLPROC_HSIZE", "VPROT", "VpageRegion",
           "proc_heads", "all_procs", "find_proc", "rb_inorder", "map_entries",
           "object_pages", "vkernel_vmspaces", "pmap_root", "discover", "regions_of_proc"]

VM_MAPTYPE_VPAGETABLE = 2      # [inferred] sys/vm/vm.h: UNSPECIFIED 0, NORMAL 1, VPAGETABLE 2
ALLPROC_HSIZE = 256            # kern_proc.c
VPROT = {0x1: "r", 0x2: "w", 0x4: "x"}   # VM_PROT_READ/WRITE/EXECUTE
MAX_NODES = 1 << 20            # a longer list or tree is a loop or garbage
KvaToPa = Callable[[int], int]


@dataclass(frozen=True)
class VpageRegion:
    """One ``MAP_VPAGETABLE`` map entry of one vmspace of one process."""

    pid: int
    comm: str
    proc: int                 # struct proc *
    vmspace: int              # struct vmspace *
    space: str                # "process" (p_vmspace) or "vmspace <id>" (vmspace_create)
    entry: int                # struct vm_map_entry *
    start: int
    end: int
    master_pde: int           # entry->aux.master_pde
    object: int               # struct vm_object *
    offset: int               # the object's byte offset at start
    prot: str                 # "rw", ...
    root: int                 # physical PML4 of the vmspace's pmap
    pages: dict[int, int]     # object byte offset -> L1 physical page (resident pages)
    object_size: int          # bytes (vm_object.size pages)
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of the entry."""
        return self.end - self.start


def _first(k: KernelReader, addr: int, type_: str, *paths: str) -> int:
    """The first of *paths* this kernel's *type_* has (a member renamed across versions)."""
    for path in paths:
        if k.has(type_, path):
            return k.field(addr, type_, path)
    raise InfraError(f"{type_} has none of {', '.join(paths)} in this kernel's types")


def proc_heads(k: KernelReader, syms: Mapping[str, int]) -> list[int]:
    """The addresses of the ``ALLPROC_HSIZE`` process list heads."""
    if "allprocs" in syms:
        step = k.btf.sizeof("struct proclist")
        return [syms["allprocs"] + i * step for i in range(ALLPROC_HSIZE)]
    if "procglob" in syms:
        step = k.btf.sizeof("struct procglob")
        off = k.btf.offsetof("struct procglob", "allproc")
        return [syms["procglob"] + i * step + off for i in range(ALLPROC_HSIZE)]
    raise InfraError("neither allprocs nor procglob among the kernel symbols read")


def _procs_of(k: KernelReader, head: int, seen: set[int]) -> Iterator[int]:
    node = k.field(head, "struct proclist", "lh_first")
    while node:
        if node in seen or len(seen) >= MAX_NODES:
            raise InfraError(f"process list {head:#x}: struct proc {node:#x} seen twice "
                             "(a loop or a stale list)")
        seen.add(node)
        yield node
        node = k.field(node, "struct proc", "p_list.le_next")


def all_procs(k: KernelReader, syms: Mapping[str, int]) -> list[int]:
    """Every ``struct proc`` on the process lists."""
    seen: set[int] = set()
    return [p for head in proc_heads(k, syms) for p in _procs_of(k, head, seen)]


def find_proc(k: KernelReader, syms: Mapping[str, int], pid: int) -> int:
    """The ``struct proc`` of *pid* (its hash bucket); InfraError if it is gone."""
    head = proc_heads(k, syms)[pid % ALLPROC_HSIZE]
    for proc in _procs_of(k, head, set()):
        if k.field(proc, "struct proc", "p_pid") == pid:
            return proc
    raise InfraError(f"no process with pid {pid} in its process list: it is gone")


def rb_inorder(k: KernelReader, root: int, type_: str, link: str) -> list[int]:
    """The nodes of a ``<sys/tree.h>`` RB tree in key order (*link*: the RB_ENTRY member)."""
    out: list[int] = []
    stack: list[int] = []
    node = root
    while stack or node:
        while node:
            if len(stack) + len(out) > MAX_NODES:
                raise InfraError(f"{type_} tree at {root:#x}: more than {MAX_NODES} nodes "
                                 "(a loop)")
            stack.append(node)
            node = k.field(node, type_, f"{link}.rbe_left")
        node = stack.pop()
        out.append(node)
        node = k.field(node, type_, f"{link}.rbe_right")
    if len(set(out)) != len(out):
        raise InfraError(f"{type_} tree at {root:#x}: a node reached twice (a loop)")
    return out


def map_entries(k: KernelReader, vmspace: int) -> list[int]:
    """The map entries of a vmspace's ``vm_map`` in address order."""
    vm_map = k.addr_of(vmspace, "struct vmspace", "vm_map")
    if k.has("struct vm_map", "rb_root.rbh_root"):
        root = k.field(vm_map, "struct vm_map", "rb_root.rbh_root")
        return rb_inorder(k, root, "struct vm_map_entry", "rb_entry")
    header = k.addr_of(vm_map, "struct vm_map", "header")
    out: list[int] = []
    node = k.field(vm_map, "struct vm_map", "header.next")
    while node and node != header:
        if len(out) >= MAX_NODES or node in out[-1:]:
            raise InfraError(f"vm_map {vm_map:#x}: the entry list does not end")
        out.append(node)
        node = k.field(node, "struct vm_map_entry", "next")
    return out


def object_pages(k: KernelReader, obj: int) -> dict[int, int]:
    """Object byte offset -> L1 physical page of each resident page (``rb_memq``)."""
    root = k.field(obj, "struct vm_object", "rb_memq.rbh_root")
    out: dict[int, int] = {}
    for page in rb_inorder(k, root, "struct vm_page", "rb_entry"):
        pindex = k.field(page, "struct vm_page", "pindex")
        out[pindex * PAGE_SIZE] = k.field(page, "struct vm_page", "phys_addr")
    return out


def vkernel_vmspaces(k: KernelReader, proc: int) -> list[tuple[int, int]]:
    """``(id, vmspace)`` of each vmspace the process made with ``vmspace_create()``."""
    vkp = k.field(proc, "struct proc", "p_vkernel") if k.has("struct proc", "p_vkernel") \
        else 0
    if not vkp:
        return []
    root = k.field(vkp, "struct vkernel_proc", "root.rbh_root")
    return [(k.field(ve, "struct vmspace_entry", "id"),
             k.field(ve, "struct vmspace_entry", "vmspace"))
            for ve in rb_inorder(k, root, "struct vmspace_entry", "rb_entry")]


def pmap_root(k: KernelReader, vmspace: int, kva_to_pa: KvaToPa, mem_size: int) -> int:
    """The physical PML4 of the vmspace's pmap (``vm_pmap.pm_pml4`` translated)."""
    pmap = k.addr_of(vmspace, "struct vmspace", "vm_pmap")
    pml4 = k.field(pmap, "struct pmap", "pm_pml4")
    try:
        root = kva_to_pa(pml4)
    except MemoryReadError as exc:
        raise InfraError(f"vmspace {vmspace:#x}: pm_pml4 {pml4:#x} is not mapped") from exc
    if root % PAGE_SIZE or root >= mem_size:
        raise InfraError(f"vmspace {vmspace:#x}: pm_pml4 {pml4:#x} -> {root:#x} is not a "
                         f"page below {mem_size:#x}")
    return root


def _prot(value: int) -> str:
    return "".join(c for bit, c in VPROT.items() if value & bit)


def _comm(k: KernelReader, proc: int) -> str:
    if not k.has("struct proc", "p_comm"):
        return ""
    off = k.btf.offsetof("struct proc", "p_comm")
    raw = k.kmem.read(proc + off, 16)
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _region(k: KernelReader, proc: int, vmspace: int, space: str, entry: int,
            kva_to_pa: KvaToPa, mem_size: int) -> VpageRegion:
    e = "struct vm_map_entry"
    start = _first(k, entry, e, "ba.start", "start")
    end = _first(k, entry, e, "ba.end", "end")
    obj = _first(k, entry, e, "ba.object", "object.vm_object")
    offset = _first(k, entry, e, "ba.offset", "offset")
    pages = object_pages(k, obj) if obj else {}
    size = k.field(obj, "struct vm_object", "size") * PAGE_SIZE if obj else 0
    checks = {"page_aligned": start % PAGE_SIZE == 0 and end % PAGE_SIZE == 0 and start < end,
              "object": obj != 0, "offset_zero": offset == 0,
              "pages_in_memory": all(p < mem_size for p in pages.values())}
    return VpageRegion(
        pid=k.field(proc, "struct proc", "p_pid"), comm=_comm(k, proc), proc=proc,
        vmspace=vmspace, space=space, entry=entry, start=start, end=end,
        master_pde=k.field(entry, e, "aux.master_pde"), object=obj, offset=offset,
        prot=_prot(k.field(entry, e, "protection")),
        root=pmap_root(k, vmspace, kva_to_pa, mem_size), pages=pages, object_size=size,
        checks=checks)


def _spaces(k: KernelReader, proc: int) -> list[tuple[str, int]]:
    own = k.field(proc, "struct proc", "p_vmspace")
    out = [("process", own)] if own else []
    return out + [(f"vmspace {vid:#x}", vms) for vid, vms in vkernel_vmspaces(k, proc) if vms]


def regions_of_proc(k: KernelReader, proc: int, kva_to_pa: KvaToPa, mem_size: int,
                    maptype: int = VM_MAPTYPE_VPAGETABLE) -> list[VpageRegion]:
    """The VPAGETABLE regions of one process, in its own map and its vkernel vmspaces."""
    out = []
    for space, vmspace in _spaces(k, proc):
        for entry in map_entries(k, vmspace):
            if k.field(entry, "struct vm_map_entry", "maptype") == maptype:
                out.append(_region(k, proc, vmspace, space, entry, kva_to_pa, mem_size))
    return out


def discover(k: KernelReader, syms: Mapping[str, int], kva_to_pa: KvaToPa, mem_size: int,
             maptype: int = VM_MAPTYPE_VPAGETABLE) -> list[VpageRegion]:
    """Every VPAGETABLE region of every process (L1 halted)."""
    return [r for proc in all_procs(k, syms)
            for r in regions_of_proc(k, proc, kva_to_pa, mem_size, maptype)]
