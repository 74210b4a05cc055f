"""The typed description of a VM that reference models take as input.

A model turns a :class:`VMDesc` into an :class:`Expectation`: the pages that
must be mapped (``required``) and a rule (``check``) that every observed leaf
must satisfy.  :func:`harness.diff.diff` applies both to a walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from harness.findings import Finding
from harness.formats.base import Mapping

__all__ = ["MemRange", "Backing", "DictBacking", "Access", "VMDesc", "ExpectedPage",
           "Expectation", "Model", "RANGE_KINDS"]

RANGE_KINDS = ("ram", "reserved", "mmio", "rom", "device")


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


@dataclass
class Expectation:
    """The model's verdict rules for one VM."""

    vm: str
    required: list[ExpectedPage]
    check: Callable[[Mapping], list[Finding]]   # rule every observed leaf must satisfy


@dataclass(frozen=True)
class Model:
    """A registry record for one hypervisor's reference model."""

    name: str                                   # "kvm-x86", "openbsd-vmm", ...
    description: str
    formats: tuple[str, ...]                    # formats it can judge
    expect: Callable[[VMDesc], Expectation]
