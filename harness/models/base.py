"""The typed description of a VM that reference models take as input.

A model turns a :class:`VMDesc` into an :class:`Expectation`: the pages that
must be mapped (``required``) and a rule (``check``) that every observed leaf
must satisfy.  :func:`harness.diff.diff` applies both to a walk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from harness.errors import ScenarioError
from harness.findings import NOT_PRESENT, Finding
from harness.formats.base import Mapping
from harness.formats.leaves import Leaves

__all__ = ["MemRange", "Backing", "DictBacking", "Access", "VMDesc", "ExpectedPage",
           "ExpectedPages", "Expectation", "Model", "RANGE_KINDS", "PAGE_SIZE", "page_accesses",
           "perm_str", "rule_str", "segments", "frame_findings", "permission_findings",
           "outside_finding", "leftover_finding", "options_of", "leaf_accesses",
           "leaf_size_finding"]

RANGE_KINDS = ("ram", "reserved", "mmio", "rom", "device")
PAGE_SIZE = 4096


@dataclass(frozen=True)
class MemRange:
    """One guest memory range (a KVM memslot, an OpenBSD vm_mem_range, a bhyve mem_map)."""

    gpa: int
    size: int
    kind: str = "ram"                 # one of RANGE_KINDS
    prot: str = "rwx"                 # what the hypervisor grants: subset of "rwx"
    hva: int | None = None            # VMM-process address backing gpa (vmr_va, userspace_addr)
    name: str = ""
    flags: frozenset[str] = frozenset()  # "readonly", "dirty_log", "wired", ...

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def contains(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.end


class Backing(Protocol):
    """How a range's address resolves to a host page."""

    def resolve(self, rng: MemRange, gpa: int) -> int | None:
        """L1 physical page backing *gpa* in *rng*, or None if not resident."""
        ...


@dataclass
class DictBacking:
    """Backing from a dict of GPA page -> host physical page (e.g. from a pagemap)."""

    pages: dict[int, int] = field(default_factory=dict)

    def resolve(self, rng: MemRange, gpa: int) -> int | None:
        return self.pages.get(gpa & ~0xFFF)


@dataclass(frozen=True)
class Access:
    """A page the workload touched, and how: "r", "w" or "x"."""

    gpa: int
    access: str


@dataclass
class VMDesc:
    """Everything a model needs to know about one VM."""

    name: str
    ranges: tuple[MemRange, ...]
    backing: Backing = field(default_factory=DictBacking)
    touched: tuple[Access, ...] = ()
    removed: tuple[int, ...] = ()     # GPAs of ranges removed before the check
    torn_down: bool = False           # the VM was destroyed before the check
    options: dict[str, Any] = field(default_factory=dict)  # model-specific knobs

    def range_of(self, gpa: int) -> MemRange | None:
        """The live range containing *gpa*, or None."""
        for r in self.ranges:
            if r.contains(gpa) and r.gpa not in self.removed:
                return r
        return None


@dataclass(frozen=True)
class ExpectedPage:
    """A page that must be mapped, with what its leaf must say (None = not checked)."""

    gpa: int
    hpa: int | None
    r: bool | None = None
    w: bool | None = None
    x: bool | None = None
    memtype: int | None = None


@dataclass(frozen=True)
class ExpectedPages:
    """Pages that must be mapped, as columns: what a model with many pages hands over.

    ``hpa_known`` says where ``hpa`` is judged; ``r``, ``w``, ``x`` are 1 (must be
    set), 0 (must be clear) or -1 (not checked); ``memtype`` -1 is not checked.

    >>> ps = ExpectedPages.of([ExpectedPage(0x1000, 0x9000, r=True)])
    >>> ps.page(0)
    ExpectedPage(gpa=4096, hpa=36864, r=True, w=None, x=None, memtype=None)
    """

    gpa: npt.NDArray[np.uint64]
    hpa: npt.NDArray[np.uint64]
    hpa_known: npt.NDArray[np.bool_]
    r: npt.NDArray[np.int8]
    w: npt.NDArray[np.int8]
    x: npt.NDArray[np.int8]
    memtype: npt.NDArray[np.int16]

    def __len__(self) -> int:
        return int(self.gpa.shape[0])

    @staticmethod
    def of(pages: Iterable[ExpectedPage]) -> ExpectedPages:
        """The columns of a list of pages."""
        rows = list(pages)

        def tri(v: bool | None) -> int:
            return -1 if v is None else int(v)
        return ExpectedPages(
            np.array([p.gpa for p in rows], np.uint64),
            np.array([p.hpa or 0 for p in rows], np.uint64),
            np.array([p.hpa is not None for p in rows], np.bool_),
            np.array([tri(p.r) for p in rows], np.int8),
            np.array([tri(p.w) for p in rows], np.int8),
            np.array([tri(p.x) for p in rows], np.int8),
            np.array([-1 if p.memtype is None else p.memtype for p in rows], np.int16))

    def ascending(self) -> ExpectedPages:
        """Sorted by GPA (stable; itself when already sorted)."""
        g = self.gpa
        if g.size < 2 or bool((g[1:] >= g[:-1]).all()):
            return self
        order = np.argsort(g, kind="stable")
        return ExpectedPages(*(getattr(self, c)[order] for c in self.__dataclass_fields__))

    def page(self, i: int) -> ExpectedPage:
        """Row *i* as an ExpectedPage."""
        def opt(v: int) -> bool | None:
            return None if v < 0 else bool(v)
        mt = int(self.memtype[i])
        return ExpectedPage(int(self.gpa[i]), int(self.hpa[i]) if self.hpa_known[i] else None,
                            opt(int(self.r[i])), opt(int(self.w[i])), opt(int(self.x[i])),
                            None if mt < 0 else mt)


@dataclass
class Expectation:
    """The model's verdict rules for one VM.

    ``check_leaves``, when a model gives it, is ``check`` over all leaves at once
    (:class:`~harness.formats.leaves.Leaves` columns): the diff then uses it
    instead of building one Mapping per leaf.  It must judge exactly as
    ``check`` does.
    """

    vm: str
    required: list[ExpectedPage] | ExpectedPages
    check: Callable[[Mapping], list[Finding]]   # rule every observed leaf must satisfy
    check_leaves: Callable[[Leaves], list[Finding]] | None = None


@dataclass(frozen=True)
class Model:
    """A registry record for one hypervisor's reference model."""

    name: str                                   # "kvm-x86", "openbsd-vmm", ...
    description: str
    formats: tuple[str, ...]                    # formats it can judge
    expect: Callable[[VMDesc], Expectation]


# ---- helpers shared by the models (pure) ---------------------------------------------

def page_accesses(touched: Iterable[Access]) -> dict[int, str]:
    """Touched pages -> the accesses made to them, e.g. {0x1000: "rw"}.

    >>> page_accesses([Access(0x1008, "w"), Access(0x1000, "r")])
    {4096: 'rw'}
    """
    out: dict[int, set[str]] = {}
    for a in touched:
        out.setdefault(a.gpa & ~(PAGE_SIZE - 1), set()).add(a.access)
    return {page: "".join(k for k in "rwx" if k in acc) for page, acc in out.items()}


def leaf_accesses(accs: dict[int, str], start: int, end: int) -> str:
    """The accesses made to any page of the leaf [start, end), from :func:`page_accesses`.

    A hypervisor that decides a leaf's permissions at a fault decides them for
    the whole leaf: a write to one page of a 2 MiB block makes the block
    writable, an instruction fetch makes it executable.  Models that relate
    accesses to permissions therefore judge a leaf by the union of the
    accesses to its pages, not page by page.

    >>> leaf_accesses({0x200000: "r", 0x201000: "x", 0x400000: "w"}, 0x200000, 0x400000)
    'rx'
    """
    if end - start == PAGE_SIZE:
        return accs.get(start, "")
    seen = {k for page, acc in accs.items() if start <= page < end for k in acc}
    return "".join(k for k in "rwx" if k in seen)


def perm_str(r: bool, w: bool, x: bool) -> str:
    """An observed permission as "rwx" with "-" for a clear bit.

    >>> perm_str(True, False, True)
    'r-x'
    """
    return ("r" if r else "-") + ("w" if w else "-") + ("x" if x else "-")


def rule_str(want: dict[str, bool]) -> str:
    """An expected permission as "rwx": letter = must be set, "-" = must be clear, "?" = either.

    >>> rule_str({"r": True, "w": False})
    'r-?'
    """
    return "".join("?" if k not in want else (k if want[k] else "-") for k in "rwx")


def frame_findings(vm: str, page: int, want: int | None, got: int,
                   detail: str) -> list[Finding]:
    """``wrong_frame`` when *page* maps *got* but the model wants *want* (None: not judged)."""
    if want is None or want == got:
        return []
    return [Finding("wrong_frame", vm, page, expected=want, observed=got, detail=detail)]


def permission_findings(vm: str, gpa: int, m: Mapping, want: dict[str, bool],
                        detail: str, end: int | None = None) -> list[Finding]:
    """``permission`` when leaf *m*'s R/W/X differ from any bit *want* names.

    *end*: the finding covers [gpa, end) (a leaf judged as a whole), else one page.
    """
    if all(getattr(m, k) == v for k, v in want.items()):
        return []
    return [Finding("permission", vm, gpa, expected=rule_str(want),
                    observed=perm_str(m.r, m.w, m.x), detail=detail,
                    end=None if end is None else _span_end(gpa, end))]


def leaf_size_finding(vm: str, m: Mapping, largest: int, why: str) -> list[Finding]:
    """``bad_entry`` when leaf *m* is larger than *largest* bytes (a hypervisor rule)."""
    if m.size <= largest:
        return []
    return [Finding("bad_entry", vm, m.gpa, expected=largest, observed=m.size,
                    detail=f"leaf {m.raw:#x}: {why}", end=m.end)]


def segments(vm: VMDesc, start: int, end: int) -> list[tuple[int, int, MemRange | None]]:
    """Split [start, end) at range borders: (start, end, range or None), ascending.

    Removed ranges are returned too (``rng.gpa in vm.removed``); callers decide.
    """
    out: list[tuple[int, int, MemRange | None]] = []
    pos = start
    for r in sorted(vm.ranges, key=lambda r: r.gpa):
        if r.end <= pos or r.gpa >= end:
            continue
        if r.gpa > pos:
            out.append((pos, r.gpa, None))
        seg_end = min(r.end, end)
        out.append((max(pos, r.gpa), seg_end, r))
        pos = seg_end
    if pos < end:
        out.append((pos, end, None))
    return out


def _span_end(start: int, end: int) -> int | None:
    return end if end - start > PAGE_SIZE else None


def outside_finding(vm: VMDesc, start: int, end: int, rng: MemRange | None,
                    m: Mapping) -> Finding:
    """The finding for a leaf part [start, end) outside every live range.

    A part inside a removed range is ``leftover``; anywhere else ``unexpected``.
    """
    if rng is not None and rng.gpa in vm.removed:
        return Finding("leftover", vm.name, start, expected=NOT_PRESENT,
                       observed=m.hpa + start - m.gpa,
                       detail=f"leaf {m.raw:#x} in removed range {rng.gpa:#x}",
                       end=_span_end(start, end))
    where = f" in {rng.kind} range {rng.gpa:#x}" if rng is not None else ""
    return Finding("unexpected", vm.name, start, expected=NOT_PRESENT,
                   observed=m.hpa + start - m.gpa,
                   detail=f"leaf {m.raw:#x}{where}", end=_span_end(start, end))


def leftover_finding(vm: VMDesc, m: Mapping, why: str = "after teardown") -> Finding:
    """A leaf that must not exist any more."""
    return Finding("leftover", vm.name, m.gpa, expected=NOT_PRESENT, observed=m.hpa,
                   detail=f"leaf {m.raw:#x} {why}", end=_span_end(m.gpa, m.end))


OptionsT = TypeVar("OptionsT")


def options_of(vm: VMDesc, cls: type[OptionsT]) -> OptionsT:
    """The model options of *vm* as the dataclass *cls*; unknown keys are a ScenarioError."""
    known = set(getattr(cls, "__dataclass_fields__", {}))
    unknown = sorted(set(vm.options) - known)
    if unknown:
        raise ScenarioError(f"unknown model option(s) {unknown}; known: {sorted(known)}",
                            field="options")
    return cls(**vm.options)
