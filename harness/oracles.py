"""Oracles beyond the model: what a teardown use-after-free looks like from outside.

* ``freed_frame``: a leaf of a live VM maps a frame the L1 kernel holds no reference
  to (a guest OS's :class:`FrameRefs` reads the count, through the kernel's own
  types, while L1 is halted).  Before judging, the reader must pass its own test:
  every observed VM's root table page is referenced (a reader whose arithmetic is
  wrong reads garbage there, and is an infrastructure error, not a finding).
* ``stale``: a leaf maps a GPA whose page the VMM process no longer has (its pagemap
  reports the page absent): an invalidation KVM missed.
* ``stale_table``: a leaf that disagrees with its VM's backing sits in a table page,
  at the same index and with the same value, as an entry of a VM that was destroyed
  before: the destroyed VM's table is still reachable from a live root.
* ``kernel_report``: the L1 kernel's own reports on its console (the guest OS's
  report patterns: sanitizers, lock checkers, warnings, bugs), each with its first
  lines.

Pure functions over what a check observed; :func:`gather` is the only one that reads
memory, through the :class:`~harness.observe.KernelView` of a halted L1.

>>> scan_reports("ok\\n[ 1.0] UBSAN: shift-out-of-bounds in x.c\\nmore\\n", (r"UBSAN: ",))
[('[ 1.0] UBSAN: shift-out-of-bounds in x.c', '[ 1.0] UBSAN: shift-out-of-bounds in x.c\\nmore')]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import InfraError
from harness.findings import Finding
from harness.formats.base import Mapping
from harness.models.base import PAGE_SIZE, VMDesc
from harness.observe import KernelView, ObservedVM

if TYPE_CHECKING:
    from harness.workload import VMReport

__all__ = ["FrameRefs", "FrameFacts", "gather", "freed_frames", "absent_backing",
           "TableHistory", "vm_key", "scan_reports", "report_findings", "leaf_frames"]

REPORT_LINES = 12                   # lines of a kernel report kept in its finding


@dataclass(frozen=True)
class FrameRefs:
    """How one L1 kernel says whether it holds a frame (its memory manager's count).

    *read* gets the halted L1, the observed VMs and frame addresses, and returns
    each frame's reference count; *symbols* are the kernel symbols it needs (read
    once per boot with the hypervisor's).
    """

    description: str
    read: Callable[[KernelView, Sequence[ObservedVM], Sequence[int]], dict[int, int]]
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True)
class FrameFacts:
    """Reference counts read while L1 was halted (empty with a reason: not available)."""

    refcounts: dict[int, int] = field(default_factory=dict)
    unavailable: str = ""


def leaf_frames(m: Mapping) -> int:
    """The frame whose count speaks for a leaf: its first (a huge leaf's head page)."""
    return m.hpa & ~(PAGE_SIZE - 1)


def gather(view: KernelView, vms: Sequence[ObservedVM], refs: FrameRefs | None) -> FrameFacts:
    """Reference counts of every leaf frame and every root, read now (L1 halted).

    Raises InfraError if a root table page reads as unreferenced: the reader is wrong.
    """
    if refs is None:
        return FrameFacts(unavailable="the hypervisor record has no frame reader")
    frames = sorted({leaf_frames(m) for ob in vms for m in ob.walk.mappings}
                    | {ob.root for ob in vms if ob.root})
    if not frames:
        return FrameFacts()
    counts = refs.read(view, vms, frames)
    bad = [f"{ob.name} root {ob.root:#x}: {counts.get(ob.root)}" for ob in vms
           if ob.root and counts.get(ob.root, 0) <= 0]
    if bad:
        raise InfraError(f"frame reader ({refs.description}) fails its own test: a live "
                         f"VM's root table page reads as unreferenced ({'; '.join(bad)})")
    return FrameFacts(refcounts=counts)


def freed_frames(vm: str, ob: ObservedVM, facts: FrameFacts) -> list[Finding]:
    """``freed_frame`` for each leaf whose frame has no reference."""
    out = []
    for m in ob.walk.mappings:
        count = facts.refcounts.get(leaf_frames(m))
        if count is not None and count <= 0:
            out.append(Finding("freed_frame", vm, m.gpa, expected="a referenced frame",
                               observed=m.hpa, detail=f"leaf {m.raw:#x}: the L1 kernel holds "
                               f"no reference to this frame (count {count})"))
    return out


def absent_backing(vm: str, ob: ObservedVM, absent: Iterable[int]) -> list[Finding]:
    """``stale`` for each leaf over a GPA page the VMM process does not have."""
    gone = set(absent)
    out = []
    for m in ob.walk.mappings:
        for page in range(m.gpa, m.end, PAGE_SIZE):
            if page in gone:
                out.append(Finding("stale", vm, page, expected="not mapped (no page in the "
                                   "VMM process)", observed=m.hpa + page - m.gpa,
                                   detail=f"leaf {m.raw:#x}: the VMM process's page is gone "
                                   "(an invalidation was missed)"))
    return out


# ---- table pages of destroyed VMs ---------------------------------------------------

def _own_frame(desc: VMDesc, m: Mapping) -> bool:
    """Whether leaf *m* maps the frame the VM's own backing gives for its GPA."""
    rng = desc.range_of(m.gpa)
    return rng is not None and desc.backing.resolve(rng, m.gpa) == m.hpa


Entry = tuple[int, int, int]          # (table page, index, raw value)


def vm_key(vm: VMReport) -> tuple[Any, ...]:
    """A VM's identity across checks: its process, cycle, index and memory."""
    return (vm.pid, vm.cycle, vm.index, frozenset(s.hva for s in vm.slots))


@dataclass
class TableHistory:
    """The leaf entries of every VM seen live, and which VMs are gone since."""

    live: dict[tuple[Any, ...], tuple[str, frozenset[Entry]]] = field(default_factory=dict)
    gone: dict[Entry, str] = field(default_factory=dict)      # entry -> destroyed VM's name

    def seen(self, key: tuple[Any, ...], name: str, ob: ObservedVM, desc: VMDesc) -> None:
        """Remember the entries of a VM observed live that map its own frames."""
        entries = frozenset((m.table, m.index, m.raw) for m in ob.walk.mappings
                            if _own_frame(desc, m))
        self.live[key] = (name, entries)

    def settle(self, live_keys: Iterable[tuple[Any, ...]]) -> None:
        """VMs remembered live but not live now are gone: their entries become stale."""
        now = set(live_keys)
        for key in [k for k in self.live if k not in now]:
            name, entries = self.live.pop(key)
            for e in entries:
                self.gone[e] = name

    def findings(self, vm: str, ob: ObservedVM, desc: VMDesc) -> list[Finding]:
        """``stale_table`` for a leaf the backing disagrees with, found in a gone VM's table."""
        out = []
        for m in ob.walk.mappings:
            owner = self.gone.get((m.table, m.index, m.raw))
            if owner is None:
                continue
            if _own_frame(desc, m):
                continue                # the live VM's own frame: a legitimate reuse
            out.append(Finding("stale_table", vm, m.gpa, expected="no entry of a destroyed VM",
                               observed=m.hpa, detail=f"table page {m.table:#x}[{m.index}] = "
                               f"{m.raw:#x} is {owner}'s, destroyed before"))
        return out


# ---- kernel reports on the console -------------------------------------------------

def scan_reports(text: str, patterns: Sequence[str]) -> list[tuple[str, str]]:
    """(first line, first lines) of each kernel report in console *text*.

    A report starts at a line matching one of *patterns*; it takes the following
    lines up to :data:`REPORT_LINES` or the next report.
    """
    if not patterns:
        return []
    start = re.compile("|".join(f"(?:{p})" for p in patterns))
    lines = text.replace("\r", "").splitlines()
    heads = [i for i, ln in enumerate(lines) if start.search(ln)]
    out = []
    for n, i in enumerate(heads):
        end = min(i + REPORT_LINES, heads[n + 1] if n + 1 < len(heads) else len(lines))
        out.append((lines[i].strip(), "\n".join(lines[i:end]).strip()))
    return out


def report_findings(text: str, patterns: Sequence[str], where: str) -> list[Finding]:
    """``kernel_report`` findings for the reports in *text* (*where*: e.g. the iteration)."""
    return [Finding("kernel_report", "-", None, expected="no kernel report", observed=first,
                    detail=f"{where}:\n{excerpt}")
            for first, excerpt in scan_reports(text, patterns)]
