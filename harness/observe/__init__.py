"""Observers: what one hypervisor's live VMs look like in a halted L1.

An observer is a function ``observe(view: KernelView) -> list[ObservedVM]``
held by its :class:`harness.hypervisors.Hypervisor` record.  It gets
everything through :class:`KernelView` (a debug target, the L1's memories,
kernel symbols and types read while L1 ran) and does no I/O of its own, so it
runs the same over a live gdbstub or a :class:`~harness.target.FakeTarget`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.arch import Arch
from harness.formats.base import WalkResult
from harness.ktypes import KernelTypes
from harness.target import L1Memory, Target

__all__ = ["ObservedVM", "KernelView"]


@dataclass(frozen=True)
class KernelView:
    """A halted L1 as an observer sees it."""

    target: Target                    # registers, translation (L1 is halted)
    arch: Arch
    mem: L1Memory                     # physical (RAM only) and kernel-virtual readers
    symbols: Mapping[str, int]        # the hypervisor's needed symbols, this boot
    types: KernelTypes                # the kernel's (and its modules') types
    facts: Mapping[str, int] = field(default_factory=dict)  # read while L1 ran
    fault_log: Path | None = None     # the emulator's nested-paging event log


@dataclass
class ObservedVM:
    """A live VM as extracted from L1: its root, its walk, and how it was found."""

    name: str                       # stable label, e.g. "kvm@0xffffc90000a5d000"
    format: str                     # FORMATS key
    root: int                       # physical address of the top table
    params: Any                     # the walk parameters used
    walk: WalkResult
    slot_hvas: frozenset[int] = frozenset()   # userspace addresses of its memslots
    slots: list[dict[str, Any]] = field(default_factory=list)   # id, gpa, size, hva[, kind]
    discovery: dict[str, Any] = field(default_factory=dict)   # cross-checks, pid, ...
    # what this VM's model needs that only discovery knows (a vkernel's master PDE and
    # memory image): merged into VMDesc.options over the hypervisor's model_options
    model_options: dict[str, Any] = field(default_factory=dict)
