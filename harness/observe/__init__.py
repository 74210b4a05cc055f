"""Observers: find the live VMs of one hypervisor in a halted L1 and walk their roots."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import InfraError
from harness.formats.base import WalkResult

__all__ = ["ObservedVM", "settle_in_kernel", "l1_memories"]


@dataclass
class ObservedVM:
    """A live VM as extracted from L1: its root, its walk, and how it was found."""

    name: str                       # stable label, e.g. "kvm@0xffffc90000a5d000"
    format: str                     # FORMATS key
    root: int                       # physical address of the top table
    params: Any                     # the walk parameters used
    walk: WalkResult
    slot_hvas: frozenset[int] = frozenset()   # userspace addresses of its memslots
    slots: list[dict[str, int]] = field(default_factory=list)
    discovery: dict[str, Any] = field(default_factory=dict)   # cross-checks, pid, ...


def settle_in_kernel(gdb: Any, in_kernel: Callable[[], bool], tries: int = 100) -> None:
    """Re-halt L1 until the CPU GDB reads through is in kernel mode.

    Kernel virtual addresses are read through the halted CPU's own page
    tables; with page-table isolation (KPTI) a CPU stopped in user mode does
    not map the kernel, and every read would fail.  L1 is mostly idle in the
    kernel, so a few short resumes are enough.
    """
    for _ in range(tries):
        if in_kernel():
            return
        gdb.cont()
        time.sleep(0.002)
        gdb.interrupt()
    raise InfraError(f"the L1 CPU was in user mode at each of {tries} halts; "
                     "kernel memory cannot be read through its page tables")


def l1_memories(ctx: Any) -> tuple[Any, Any, int]:
    """(physical reader, kernel-virtual reader, RAM end) of the halted L1, page-cached.

    Physical reads are limited to QEMU's RAM ranges: its gdbstub reads holes
    as zeros instead of failing.
    """
    from harness.gdb import GdbPhysMem, GdbVirtMem
    from harness.mem import PageCache
    ram = ctx.cache.setdefault("ram", ctx.machine.ram_ranges())
    return (PageCache(GdbPhysMem(ctx.gdb, ram=ram)), PageCache(GdbVirtMem(ctx.gdb)),
            max(hi for _, hi in ram))
