"""A FreeBSD process's page tables, found from its pid in L1 kernel memory (CTF offsets).

``allproc`` (``kern/kern_proc.c``: ``struct proclist allproc``, a ``LIST_HEAD`` of
``struct proc`` linked through ``p_list``) -> the process whose ``p_pid`` is the
pid -> ``p_vmspace`` -> its embedded ``struct pmap vm_pmap`` -> ``pm_cr3``: the
physical address of the process's top-level page table (amd64 ``pmap.h``; with
PTI, the kernel-mode table, which maps the user half too).  With that root,
:func:`harness.discovery.x86_pagetables.range_frames` reads the frames behind the
bhyve process's mapping of a VM's memory (libvmmapi maps the system segment at
``vm_map_gpa()``): the backing truth, independent of the nested tables.

>>> PROC_SYMBOLS
('allproc',)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from harness.discovery.linux_kvm_common import KernelReader
from harness.discovery.x86_pagetables import range_frames
from harness.errors import InfraError
from harness.ktypes import KernelTypes
from harness.mem import PAGE_SIZE, PhysMem

__all__ = ["PROC_SYMBOLS", "find_proc", "proc_pmap_root", "proc_frames"]

PROC_SYMBOLS = ("allproc",)
MAX_PROCS = 1 << 16              # a longer list is a loop or garbage
PT_X86 = 0


def find_proc(k: KernelReader, syms: Mapping[str, int], pid: int) -> int:
    """The ``struct proc`` with ``p_pid == pid`` on ``allproc``; InfraError if none."""
    node = k.field(syms["allproc"], "struct proclist", "lh_first")
    seen: set[int] = set()
    while node:
        if node in seen or len(seen) >= MAX_PROCS:
            raise InfraError(f"allproc: struct proc {node:#x} seen twice or more than "
                             f"{MAX_PROCS} entries (a loop or a stale list)")
        seen.add(node)
        if k.field(node, "struct proc", "p_pid") == pid:
            return node
        node = k.field(node, "struct proc", "p_list.le_next")
    raise InfraError(f"no process with pid {pid} on allproc ({len(seen)} processes): the "
                     "VMM process is gone")


def proc_pmap_root(k: KernelReader, syms: Mapping[str, int], pid: int, mem_size: int) -> int:
    """``pm_cr3`` of process *pid*'s pmap (``p_vmspace->vm_pmap``, a PT_X86 pmap)."""
    proc = find_proc(k, syms, pid)
    vmspace = k.field(proc, "struct proc", "p_vmspace")
    if vmspace == 0:
        raise InfraError(f"process {pid} ({proc:#x}) has no vmspace (exiting?)")
    pmap = vmspace + k.btf.offsetof("struct vmspace", "vm_pmap")
    if k.has("struct pmap", "pm_type") and k.field(pmap, "struct pmap", "pm_type") != PT_X86:
        raise InfraError(f"process {pid}: its pmap {pmap:#x} is not a PT_X86 pmap")
    root = k.field(pmap, "struct pmap", "pm_cr3")
    if not root or root % PAGE_SIZE or root >= mem_size:
        raise InfraError(f"process {pid}: pmap {pmap:#x} pm_cr3 {root:#x} is not a page "
                         f"below {mem_size:#x}")
    return root


def proc_frames(kmem: PhysMem, pmem: PhysMem, syms: Mapping[str, int], types: KernelTypes,
                pid: int, ranges: Iterable[tuple[int, int, int]],
                mem_size: int) -> dict[int, int]:
    """GPA page -> L1 frame of *ranges* ``(gpa, size, hva)`` as process *pid* maps them."""
    root = proc_pmap_root(KernelReader(kmem, types), syms, pid, mem_size)
    return range_frames(pmem, root, ranges)
