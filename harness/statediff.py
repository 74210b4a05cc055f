"""What the second-level tables map, compared between two runs, without host addresses.

A VM's leaves (``slat.json``'s ``mappings``) are coalesced into GPA ranges of the
same page size, permissions and memory type (:func:`coalesce`); two runs' ranges
are compared piece by piece (:func:`state_changes`).  The host frame a leaf maps,
the raw entry, the table page and the accessed/dirty bits change from boot to
boot and are left out: a patch that maps the same GPAs the same way shows no change.

>>> rows = [{"gpa": "0x0", "size": "0x1000", "r": True, "w": True, "x": True, "memtype": 6},
...         {"gpa": "0x1000", "size": "0x1000", "r": True, "w": True, "x": True, "memtype": 6},
...         {"gpa": "0x2000", "size": "0x1000", "r": True, "w": False, "x": True, "memtype": 6}]
>>> [r.text() for r in coalesce(rows)]
['GPA 0x0-0x2000: 4K rwx memtype 6', 'GPA 0x2000-0x3000: 4K r-x memtype 6']
>>> rows2 = [dict(rows[0], size="0x200000")]
>>> for c in state_changes("s", {"x": rows}, {"x": rows2}):
...     print(c.text())
x: GPA 0x0-0x2000: 4K rwx memtype 6 -> 2M rwx memtype 6
x: GPA 0x2000-0x3000: 4K r-x memtype 6 -> 2M rwx memtype 6
x: GPA 0x3000-0x200000: not mapped -> 2M rwx memtype 6
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.sizes import format_size

__all__ = ["Attrs", "Range", "StateChange", "coalesce", "vm_mappings", "state_changes"]


@dataclass(frozen=True)
class Attrs:
    """How a GPA is mapped: page size, permissions, memory type (None: none in the format)."""

    size: int
    perm: str            # "rwx", "r-x", "---"
    memtype: int | None

    def text(self) -> str:
        """``4K rwx memtype 6``."""
        return f"{format_size(self.size)} {self.perm}" + \
            (f" memtype {self.memtype}" if self.memtype is not None else "")


@dataclass(frozen=True)
class Range:
    """[lo, hi) mapped with *attrs* throughout."""

    lo: int
    hi: int
    attrs: Attrs

    def text(self) -> str:
        """``GPA 0x0-0x2000: 4K rwx``."""
        return f"GPA {self.lo:#x}-{self.hi:#x}: {self.attrs.text()}"


def _attrs(row: dict[str, Any]) -> tuple[int, int, Attrs]:
    """(gpa, end, attrs) of one ``slat.json`` mapping row."""
    gpa, size = int(str(row["gpa"]), 16), int(str(row["size"]), 16)
    perm = "".join(c if row[c] else "-" for c in "rwx")
    return gpa, gpa + size, Attrs(size, perm, row.get("memtype"))


def coalesce(rows: Iterable[dict[str, Any]]) -> list[Range]:
    """Adjacent leaves of the same attributes as one range, in GPA order."""
    out: list[Range] = []
    for lo, hi, attrs in sorted(_attrs(r) for r in rows):
        if out and out[-1].hi == lo and out[-1].attrs == attrs:
            out[-1] = Range(out[-1].lo, hi, attrs)
        else:
            out.append(Range(lo, hi, attrs))
    return out


def vm_mappings(slat: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each VM's mapping rows in a ``slat.json`` (its last check that saw VMs)."""
    return {vm["vm"]: list(vm["mappings"]) for vm in slat["vms"]}


@dataclass(frozen=True)
class StateChange:
    """A GPA range of one VM mapped differently (None: not mapped) in the two runs."""

    scenario: str
    vm: str
    lo: int
    hi: int
    base: Attrs | None
    new: Attrs | None

    def text(self) -> str:
        """``w1/vm0: GPA 0x2000-0x3000: 4K rwx -> 4K r-x``."""
        def side(a: Attrs | None) -> str:
            return a.text() if a is not None else "not mapped"
        return f"{self.vm}: GPA {self.lo:#x}-{self.hi:#x}: {side(self.base)} -> " \
               f"{side(self.new)}"

    def to_json(self) -> dict[str, Any]:
        """The ``compare --format json`` form."""
        def side(a: Attrs | None) -> dict[str, Any] | None:
            return None if a is None else {"size": f"{a.size:#x}", "perm": a.perm,
                                           "memtype": a.memtype}
        return {"scenario": self.scenario, "vm": self.vm, "gpa": f"{self.lo:#x}",
                "end": f"{self.hi:#x}", "base": side(self.base), "new": side(self.new)}


def _at(ranges: list[Range], starts: list[int], x: int) -> Attrs | None:
    """The attributes *x* is mapped with in *ranges* (sorted, disjoint; *starts* their lo)."""
    i = bisect_right(starts, x) - 1
    return ranges[i].attrs if i >= 0 and x < ranges[i].hi else None


def _vm_changes(scenario: str, vm: str, base: list[Range], new: list[Range]
                ) -> list[StateChange]:
    """The pieces between every range boundary of either side whose attributes differ."""
    cuts = sorted({x for r in base + new for x in (r.lo, r.hi)})
    out: list[StateChange] = []
    bs, ns = [r.lo for r in base], [r.lo for r in new]
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        b, n = _at(base, bs, lo), _at(new, ns, lo)
        if b == n:
            continue
        if out and out[-1].hi == lo and (out[-1].base, out[-1].new) == (b, n):
            out[-1] = StateChange(scenario, vm, out[-1].lo, hi, b, n)
        else:
            out.append(StateChange(scenario, vm, lo, hi, b, n))
    return out


def state_changes(scenario: str, base: dict[str, list[dict[str, Any]]],
                  new: dict[str, list[dict[str, Any]]]) -> list[StateChange]:
    """Every VM's differences (a VM only on one side: all of its ranges)."""
    out: list[StateChange] = []
    for vm in sorted(set(base) | set(new)):
        out += _vm_changes(scenario, vm, coalesce(base.get(vm, [])), coalesce(new.get(vm, [])))
    return out
