"""The debug target: what the harness reads and writes of a live L1, whatever carries it.

:class:`Target` is the contract between the observers (discovery, walks,
injection) and the machine backend.  QEMU's gdbstub driven by gdb implements it
today (:class:`harness.gdb.GdbTarget`); another emulator's debugger or a raw
remote-protocol client can tomorrow.  :class:`FakeTarget` implements it over a
:class:`~harness.mem.DictMem` for tests: no monkeypatching, no VM.

Reads through a Target are exact: *size* bytes or
:class:`~harness.errors.MemoryReadError`.  :class:`PhysView` and
:class:`VirtView` adapt a Target to the pure core's
:class:`~harness.mem.PhysMem` (``read(addr, size)``); :func:`l1_memories` gives
both, page-cached, with physical reads limited to the L1's RAM.

>>> from harness.mem import DictMem
>>> t = FakeTarget(DictMem(size=1 << 20), registers={"cr4": 0x1000})
>>> with t.halted():
...     t.write_phys(0x2000, b"SLAT")
...     t.read_phys(0x2000, 4), t.register("cr4")
(b'SLAT', 4096)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from harness.errors import HarnessTimeout, InfraError, MemoryReadError
from harness.mem import DictMem, PageCache, PhysMem

__all__ = ["Target", "FakeTarget", "PhysView", "VirtView", "L1Memory", "l1_memories",
           "settle_in_kernel", "Breakpoints", "Leavable", "BreakpointTimeout"]


class Target(Protocol):
    """A live (or recorded) L1 seen through a debugger."""

    def halted(self) -> AbstractContextManager[None]:
        """Stop every L1 CPU for the block, then let them run (stopped on entry: stay)."""
        ...

    def read_phys(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes of L1 physical memory at *addr*."""
        ...

    def read_virt(self, addr: int, size: int) -> bytes:
        """*size* bytes at L1 virtual *addr*, translated by the current CPU's tables."""
        ...

    def write_phys(self, addr: int, data: bytes) -> None:
        """Write *data* to L1 physical memory at *addr* (fault injection)."""
        ...

    def register(self, name: str, cpu: int | None = None) -> int:
        """Register *name* (``cr4``, ``VTTBR_EL2``) of L1 CPU *cpu* (None: current)."""
        ...

    def ram_ranges(self) -> list[tuple[int, int]]:
        """The L1's RAM as ``(start, end)`` physical ranges."""
        ...

    def translate(self, va: int) -> int:
        """The physical address of kernel virtual *va*, translated by the emulator."""
        ...

    def nudge(self) -> None:
        """Inside :meth:`halted`: let L1 run for a moment, then stop it again."""
        ...


class BreakpointTimeout(HarnessTimeout):
    """L1 did not stop at a breakpoint in time (it keeps running)."""


@runtime_checkable
class Breakpoints(Protocol):
    """An optional capability of a Target: stop L1 when a CPU reaches a kernel address
    (the remote protocol's ``Z0``/``z0``; the emulator's breakpoints, so page tables and
    memory are left alone)."""

    def set_breakpoint(self, addr: int) -> None:
        """Stop L1 when a CPU is about to execute kernel virtual *addr*."""
        ...

    def clear_breakpoint(self, addr: int) -> None:
        """Remove the breakpoint at *addr* (no error if there is none)."""
        ...

    def wait_stop(self, timeout: float) -> int:
        """Let L1 run until it stops at a breakpoint; return where (the PC).  L1 stays
        stopped.  :class:`BreakpointTimeout` after *timeout* seconds (L1 still runs)."""
        ...

    def resume(self) -> None:
        """Let a stopped L1 run again."""
        ...


@runtime_checkable
class Leavable(Protocol):
    """An optional capability of a Target: end the debug session with L1 stopped, so that
    a person's debugger can attach to the same stub (stop and keep)."""

    def leave_stopped(self) -> None:
        """Stop L1 and end the session without resuming it."""
        ...


class PhysView:
    """:class:`~harness.mem.PhysMem` over a Target's physical memory, RAM only.

    The gdbstub reads holes as zeros instead of failing: a read that is not
    inside one of *ram* raises.  None: no check.
    """

    def __init__(self, target: Target, ram: Sequence[tuple[int, int]] | None = None) -> None:
        self.target = target
        self.ram = list(ram) if ram is not None else None

    def read(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes at physical *addr*, or MemoryReadError."""
        if self.ram is not None and not any(
                lo <= addr and addr + size <= hi for lo, hi in self.ram):
            raise MemoryReadError(addr, size, "outside the L1's RAM")
        return self.target.read_phys(addr, size)


class VirtView:
    """The same interface over L1 kernel virtual addresses (the current CPU's tables)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def read(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes at virtual *addr*, or MemoryReadError."""
        return self.target.read_virt(addr, size)


@dataclass(frozen=True)
class L1Memory:
    """The halted L1's memories, as the pure core reads them."""

    phys: PhysMem                    # physical, page-cached, RAM only
    kernel: PhysMem                  # kernel virtual, page-cached
    ram: tuple[tuple[int, int], ...]  # (start, end) RAM ranges

    @property
    def size(self) -> int:
        """End of the highest RAM range: frames at or beyond it are not memory."""
        return max(hi for _, hi in self.ram)


def l1_memories(target: Target, ram: Sequence[tuple[int, int]]) -> L1Memory:
    """Page-cached physical and kernel-virtual readers of a halted L1."""
    return L1Memory(PageCache(PhysView(target, ram)), PageCache(VirtView(target)),
                    tuple(ram))


def settle_in_kernel(target: Target, registers: Sequence[str],
                     in_kernel: Callable[[Mapping[str, int]], bool], tries: int = 100) -> None:
    """Re-halt L1 until the CPU the target reads through is in kernel mode.

    Kernel virtual addresses are read through the halted CPU's own page tables;
    with page-table isolation (KPTI) a CPU stopped in user mode does not map the
    kernel, and every read would fail.  L1 is mostly idle in the kernel, so a
    few nudges are enough.  *registers* and *in_kernel* come from the
    :class:`~harness.arch.Arch`.
    """
    for _ in range(tries):
        if in_kernel({r: target.register(r) for r in registers}):
            return
        target.nudge()
    raise InfraError(f"the L1 CPU was in user mode at each of {tries} halts; "
                     "kernel memory cannot be read through its page tables")


class FakeTarget:
    """A Target over a :class:`~harness.mem.DictMem`, for tests.

    *registers* maps names to values (``"cpu1:cr4"`` for another CPU);
    *virt* maps kernel virtual page addresses to physical ones (a missing page
    raises MemoryReadError, as an unmapped address does live); *ram* defaults
    to the whole DictMem; each :meth:`nudge` updates the registers with the
    next mapping of *after_nudge* (a CPU that moved on).  ``halts`` counts the
    halted blocks entered, ``nudges`` the nudges.
    """

    def __init__(self, mem: DictMem, *, registers: Mapping[str, int] | None = None,
                 virt: Mapping[int, int] | None = None,
                 ram: Sequence[tuple[int, int]] | None = None,
                 after_nudge: Sequence[Mapping[str, int]] = ()) -> None:
        self.mem = mem
        self.registers = dict(registers or {})
        self.virt = dict(virt or {})
        self.ram = list(ram) if ram is not None else [(0, mem.size)]
        self.after_nudge = list(after_nudge)
        self.halts = 0
        self.nudges = 0
        self.running = True
        self.breakpoints: set[int] = set()
        self.reaches: list[int] = []       # kernel addresses L1 will execute, in order
        self.on_stop: Callable[[int], None] | None = None   # the world at a stop
        self.left = False                  # the session ended with L1 stopped

    def nudge(self) -> None:
        """The CPU moves on: the next register values of *after_nudge* apply."""
        self.nudges += 1
        if self.after_nudge:
            self.registers.update(self.after_nudge.pop(0))

    @contextlib.contextmanager
    def halted(self) -> Iterator[None]:
        """Stopped for the block; nested blocks stay stopped."""
        was, self.running = self.running, False
        self.halts += was
        try:
            yield
        finally:
            self.running = was

    def read_phys(self, addr: int, size: int) -> bytes:
        """From the DictMem."""
        return self.mem.read(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        """Into the DictMem."""
        self.mem.write(addr, data)

    def translate(self, va: int) -> int:
        """Through *virt*; an unmapped page raises MemoryReadError."""
        pa = self.virt.get(va & ~0xFFF)
        if pa is None:
            raise MemoryReadError(va, 1, "virtual address not mapped")
        return pa + (va & 0xFFF)

    def read_virt(self, addr: int, size: int) -> bytes:
        """Page by page through :meth:`translate`."""
        out = bytearray()
        while size:
            n = min(size, 0x1000 - (addr & 0xFFF))
            out += self.mem.read(self.translate(addr), n)
            addr, size = addr + n, size - n
        return bytes(out)

    def register(self, name: str, cpu: int | None = None) -> int:
        """From *registers*; an unknown register is an InfraError, as live."""
        key = name if cpu is None else f"cpu{cpu}:{name}"
        if key not in self.registers:
            raise InfraError(f"register {key} is not available")
        return self.registers[key]

    def ram_ranges(self) -> list[tuple[int, int]]:
        """The given RAM ranges."""
        return list(self.ram)

    # -- Breakpoints and Leavable ------------------------------------------------------

    def set_breakpoint(self, addr: int) -> None:
        """Armed until cleared."""
        self.breakpoints.add(addr)

    def clear_breakpoint(self, addr: int) -> None:
        """Disarmed."""
        self.breakpoints.discard(addr)

    def wait_stop(self, timeout: float) -> int:
        """L1 runs through :attr:`reaches` until one is a breakpoint; *on_stop* sees it."""
        self.running = True
        while self.reaches:
            pc = self.reaches.pop(0)
            if pc in self.breakpoints:
                self.running = False
                self.halts += 1
                if self.on_stop is not None:
                    self.on_stop(pc)
                return pc
        raise BreakpointTimeout(f"no breakpoint of {sorted(map(hex, self.breakpoints))} "
                                f"reached within {timeout:g} s")

    def resume(self) -> None:
        """Running again."""
        self.running = True

    def leave_stopped(self) -> None:
        """Stopped, and no longer ours."""
        self.running = False
        self.left = True
