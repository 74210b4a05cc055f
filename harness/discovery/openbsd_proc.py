"""An OpenBSD process's pmap, found from its pid in L1 kernel memory (CTF offsets).

``allprocess`` (``kern/kern_proc.c``: ``struct processlist allprocess``, a
``LIST_HEAD`` of ``struct process`` linked through ``ps_list``) -> the process
whose ``ps_pid`` is the pid -> ``ps_vmspace`` -> its ``vm_map`` (embedded in
``struct vmspace``) -> ``pmap`` -> ``pm_pdirpa``: the physical address of the
process's own top-level page table (amd64 ``pmap.h``).  With that root,
:func:`harness.discovery.x86_pagetables.range_frames` reads the frames behind
the VMM process's mappings of a VM's memory: the backing truth, independent
of the nested tables.

>>> PROC_SYMBOLS
('allprocess',)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from harness.discovery.linux_kvm_common import KernelReader
from harness.discovery.x86_pagetables import range_frames
from harness.errors import InfraError
from harness.ktypes import KernelTypes
from harness.mem import PAGE_SIZE, PhysMem

__all__ = ["PROC_SYMBOLS", "find_process", "process_pmap_root", "process_frames"]

PROC_SYMBOLS = ("allprocess",)
MAX_PROCESSES = 1 << 16          # a longer list is a loop or garbage


def find_process(k: KernelReader, syms: Mapping[str, int], pid: int) -> int:
    """The ``struct process`` with ``ps_pid == pid`` on ``allprocess``; InfraError if none."""
    node = k.field(syms["allprocess"], "struct processlist", "lh_first")
    seen: set[int] = set()
    while node:
        if node in seen or len(seen) >= MAX_PROCESSES:
            raise InfraError(f"allprocess: struct process {node:#x} seen twice or more than "
                             f"{MAX_PROCESSES} entries (a loop or a stale list)")
        seen.add(node)
        if k.field(node, "struct process", "ps_pid") == pid:
            return node
        node = k.field(node, "struct process", "ps_list.le_next")
    raise InfraError(f"no process with pid {pid} on allprocess ({len(seen)} processes): "
                     "the VMM process is gone")


def process_pmap_root(k: KernelReader, syms: Mapping[str, int], pid: int,
                      mem_size: int) -> int:
    """``pm_pdirpa`` of process *pid*'s pmap (its ``vmspace``'s ``vm_map.pmap``)."""
    proc = find_process(k, syms, pid)
    vmspace = k.field(proc, "struct process", "ps_vmspace")
    if vmspace == 0:
        raise InfraError(f"process {pid} ({proc:#x}) has no vmspace (exiting?)")
    pmap = k.field(vmspace, "struct vmspace", "vm_map.pmap")
    if pmap == 0:
        raise InfraError(f"process {pid}: vmspace {vmspace:#x} has a NULL pmap")
    root = k.field(pmap, "struct pmap", "pm_pdirpa")
    if not root or root % PAGE_SIZE or root >= mem_size:
        raise InfraError(f"process {pid}: pmap {pmap:#x} pm_pdirpa {root:#x} is not a page "
                         f"below {mem_size:#x}")
    return root


def process_frames(kmem: PhysMem, pmem: PhysMem, syms: Mapping[str, int],
                   types: KernelTypes, pid: int, ranges: Iterable[tuple[int, int, int]],
                   mem_size: int) -> dict[int, int]:
    """GPA page -> L1 frame of *ranges* ``(gpa, size, hva)`` as process *pid* maps them."""
    root = process_pmap_root(KernelReader(kmem, types), syms, pid, mem_size)
    return range_frames(pmem, root, ranges)
