"""Findings: what a disagreement between tables and model is reported as."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "FINDING_KINDS", "NOT_PRESENT"]

NOT_PRESENT = "not present"     # the expected or observed value where no mapping is (or may be)

# kind -> one-line meaning (docs/scenario-format.md lists these too)
FINDING_KINDS: dict[str, str] = {
    "missing": "a page the workload touched is not mapped",
    "unexpected": "a mapping outside every memory range (or in a range that must not be mapped)",
    "wrong_frame": "the leaf maps another host page than the model expects",
    "permission": "the leaf's R/W/X differ from what the range allows",
    "memtype": "the leaf's memory type differs from the model's",
    "reserved_bits": "an entry has reserved bits set",
    "frame_beyond_memory": "an entry points beyond the L1's memory",
    "loop": "a table refers back to itself or an ancestor",
    "read_budget": "the walk went over its budget of tables, leaves or findings",
    "shared_table": "a table page is reached from two entries where the hypervisor never "
                    "shares one",
    "bad_entry": "an entry the format forbids (e.g. PS in a PML4E)",
    "leftover": "an entry or table page remains after teardown or range removal",
    "stale": "a host PTE with no valid guest page-table path (missed invalidation)",
    "panic": "the guest kernel panicked or oopsed",
    "freed_frame": "a leaf of a live VM maps a frame the L1 kernel holds no reference to",
    "stale_table": "a table page of a destroyed VM is still reachable from a live root",
    "kernel_report": "the L1 kernel reported a problem on its console (a sanitizer, a lock "
                     "checker, a WARNING or BUG)",
    "memmap": "the kernel's memory ranges of a VM differ from what its VMM asked for",
}


@dataclass(frozen=True)
class Finding:
    """One disagreement, with the GPA, the expected and the observed value.

    ``end`` is set when findings were coalesced into a range [gpa, end).  The
    entry the finding is about, when there is one (a leaf, or an entry the
    walker refused), is ``entry`` (its physical address), ``level`` (x86
    numbering, 1 = 4 KiB), ``raw`` (its value as read) and ``table`` (the
    physical address of the table page holding it); ``step`` names the check
    step that found it.  A value that stands for "no mapping" is
    :data:`NOT_PRESENT`.
    """

    kind: str
    vm: str
    gpa: int | None
    expected: Any
    observed: Any
    detail: str = ""
    end: int | None = None
    entry: int | None = None
    level: int | None = None
    raw: int | None = None
    table: int | None = None
    step: str = ""

    def to_json(self) -> dict[str, Any]:
        """The findings.json form; addresses (and raw entries) as hex strings.

        >>> Finding("missing", "w1/vm0", 0x2000, 0x5000, NOT_PRESENT).to_json()["observed"]
        'not present'
        """
        out: dict[str, Any] = {
            "kind": self.kind, "vm": self.vm, "gpa": _hex(self.gpa),
            "expected": _jsonable(self.expected), "observed": _jsonable(self.observed),
            "detail": self.detail,
        }
        if self.end is not None:
            out["end"] = f"{self.end:#x}"
        out.update({"entry": _hex(self.entry), "level": self.level,
                    "raw": None if self.raw is None else f"{self.raw:#018x}",
                    "table": _hex(self.table), "step": self.step})
        return out

    def summary(self) -> str:
        """One line for terminals and pytest reports."""
        where = "-" if self.gpa is None else f"{self.gpa:#x}"
        if self.end is not None:
            where += f"..{self.end:#x}"
        return (f"{self.kind} vm={self.vm} gpa={where} expected={_short(self.expected)} "
                f"observed={_short(self.observed)} {self.detail}").rstrip()


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:#x}"
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _short(v: Any) -> str:
    if v is None:
        return "-"
    j = _jsonable(v)
    return str(j) if not isinstance(j, str) else j
