"""A finding's stable identity: the same disagreement gets the same signature every night.

A signature is made of the scenario, the hypervisor, the finding's kind and where
it is in the guest: the VM's label, the GPA range (page-aligned) and the level of
the entry.  Host addresses (the frame a leaf maps, the table page, the entry's
physical address) and raw entry values never enter it: they change from boot to
boot.  A finding with no GPA (a panic, a kernel report) is placed by its detail's
first line with every number in it replaced by ``N``, so ``WARNING at
arch/x86/kvm/mmu/mmu.c:1234`` stays one signature across builds that move lines.

``id`` is the first 12 hex digits of a SHA-256 over the canonical fields; ``title``
is what a person reads (syzbot's titles are the model).

>>> from harness.findings import Finding
>>> s = signature("kvm-npt-smoke", "linux-kvm-svm",
...               Finding("wrong_frame", "w1/vm0", 0x2000, 0x202000, 0x203000, level=1))
>>> s.title
'wrong_frame in w1/vm0 at GPA 0x2000 (level 1): kvm-npt-smoke on linux-kvm-svm'
>>> s == signature("kvm-npt-smoke", "linux-kvm-svm",
...                Finding("wrong_frame", "w1/vm0", 0x2000, 0x999000, 0x777000, level=1))
True
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from harness.findings import Finding

__all__ = ["Signature", "signature", "where_of", "PAGE"]

PAGE = 0x1000
_NUMBER = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8,}\b|\d+")


@dataclass(frozen=True, order=True)
class Signature:
    """A finding's identity: ``id`` (12 hex digits) and ``title``; the fields it is made of."""

    id: str
    title: str
    scenario: str
    hypervisor: str
    kind: str
    vm: str
    where: str

    def to_json(self) -> dict[str, str]:
        """The form stored in histories and ``signatures.json``."""
        return {"id": self.id, "title": self.title, "scenario": self.scenario,
                "hypervisor": self.hypervisor, "kind": self.kind, "vm": self.vm,
                "where": self.where}


def where_of(f: Finding) -> str:
    """Where *f* is, without host addresses: ``GPA 0x2000`` or ``GPA 0x2000-0x5000``
    (page-aligned, end exclusive) with the level, else the detail's normalised first line.

    >>> where_of(Finding("missing", "vm", 0x2abc, 1, 2, end=0x4001))
    'GPA 0x2000-0x5000'
    >>> where_of(Finding("panic", "", None, "", "", detail="BUG at mmu.c:1234 ffff8880deadbeef"))
    'BUG at mmu.c:N N'
    """
    if f.gpa is not None:
        lo = f.gpa & ~(PAGE - 1)
        hi = -(-f.end // PAGE) * PAGE if f.end is not None else None
        span = f"GPA {lo:#x}" if hi is None or hi <= lo + PAGE else f"GPA {lo:#x}-{hi:#x}"
        return span + (f" (level {f.level})" if f.level is not None else "")
    first = (f.detail or str(f.observed)).strip().splitlines()[:1]
    return _NUMBER.sub("N", first[0])[:120] if first else ""


def signature(scenario: str, hypervisor: str, f: Finding) -> Signature:
    """The signature of *f* found by *scenario* (its name, without ``#iteration``)."""
    scenario = scenario.split("#", 1)[0]
    where = where_of(f)
    canon = json.dumps([scenario, hypervisor, f.kind, f.vm, where], separators=(",", ":"))
    digest = hashlib.sha256(canon.encode()).hexdigest()[:12]
    vm = f" in {f.vm}" if f.vm else ""
    title = f"{f.kind}{vm} at {where}: {scenario} on {hypervisor}" if where else \
        f"{f.kind}{vm}: {scenario} on {hypervisor}"
    return Signature(digest, title, scenario, hypervisor, f.kind, f.vm, where)
