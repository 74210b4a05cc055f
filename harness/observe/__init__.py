"""Observers: find the live VMs of one hypervisor in a halted L1 and walk their roots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.formats.base import WalkResult

__all__ = ["ObservedVM"]


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
