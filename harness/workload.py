"""The guest workload ``slat-workload``: its command line and its report.

:func:`workload_argv` turns a scenario's ``workload`` parameters into the argv;
:func:`parse_report` reads the ``@@SLAT {json}`` lines it prints (see
docs/architecture.md, "The workload") from a console transcript or a file, with
kernel messages, ``\\r`` and terminal escapes interleaved.

>>> from harness.scenario.spec import SlotSpec, TouchSpec, WorkloadStep
>>> " ".join(workload_argv(WorkloadStep(index=1, line=5, hold="none",
...     slots=(SlotSpec(0, 0x10000, ("ro",)),), touch=(TouchSpec(0x1000, "r"),))))
'slat-workload --vms 1 --cycles 1 --no-hold --slot 0x0:0x10000:ro --touch 0x1000:r'
>>> report = parse_report(['@@SLAT {"event":"vm","vm":0,"pid":7,"cycle":0}',
...     '@@SLAT {"event":"pagemap","vm":0,"slot":0,"runs":[[4096,16,2]]}'])
>>> report.vms[0].pagemap
{4096: 65536, 8192: 69632}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness.errors import InfraError
from harness.scenario.spec import SlotSpec, WorkloadStep

__all__ = [
    "WORKLOAD",
    "MARKER",
    "WRITE_MARKER",
    "TAG_OFFSET",
    "SLOT_FLAGS",
    "workload_argv",
    "SlotReport",
    "ExitReport",
    "VMReport",
    "WorkloadReport",
    "parse_events",
    "parse_report",
]

WORKLOAD = "slat-workload"      # the binary, on the image's PATH
MARKER = "@@SLAT "              # prefix of every report line
WRITE_MARKER = 0x54414C53       # u32 a "w" touch stores: the bytes b"SLAT"
TAG_OFFSET = 0xFF8              # every slot page holds its GPA (u64) here
SLOT_FLAGS = ("ro", "log", "huge")
PAGE = 4096

_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1bc")
_KMSG = re.compile(r"\[\s*\d+\.\d+\]")


# ---- the command line --------------------------------------------------------

HOLD_ARGS = {"each": [], "last": ["--hold-last"], "none": ["--no-hold"]}


def _slot_arg(slot: SlotSpec) -> str:
    """``GPA:SIZE[:FLAGS]`` of one slot."""
    return f"{slot.gpa:#x}:{slot.size:#x}" + (":" + "+".join(slot.flags) if slot.flags else "")


def workload_argv(step: WorkloadStep) -> list[str]:
    """The argv of ``slat-workload`` for a scenario's (validated) ``workload`` step."""
    argv = [WORKLOAD, "--vms", str(step.vms), "--cycles", str(step.cycles),
            *HOLD_ARGS[step.hold]]
    if step.ipa_bits is not None:
        argv += ["--ipa-bits", str(step.ipa_bits)]
    if step.threads:
        argv.append("--threads")
    for slot in step.slots:
        argv += ["--slot", _slot_arg(slot)]
    for touch in step.touch:
        argv += ["--touch", f"{touch.gpa:#x}:{touch.access}"]
    return argv


# ---- the report --------------------------------------------------------------

@dataclass(frozen=True)
class SlotReport:
    """One KVM memslot as the workload set it up."""

    slot: int                  # KVM slot number
    gpa: int
    size: int
    hva: int                   # where the workload mapped it
    flags: tuple[str, ...]     # "ro" (KVM_MEM_READONLY), "log" (KVM_MEM_LOG_DIRTY_PAGES)


@dataclass(frozen=True)
class ExitReport:
    """One KVM_RUN exit: ``hlt``, ``io`` (addr = port), ``mmio`` (addr = GPA), ..."""

    reason: str
    addr: int | None = None
    write: bool | None = None


@dataclass(frozen=True)
class VMReport:
    """Everything the workload reported about one VM of one cycle."""

    index: int                          # VM number within the cycle
    cycle: int
    pid: int
    slots: tuple[SlotReport, ...]
    pagemap: dict[int, int]             # GPA page -> L1 physical address of its page
    absent: tuple[int, ...]             # GPA pages that were not present in the pagemap
    code_pages: tuple[int, ...]         # GPA pages holding the guest code
    exits: tuple[ExitReport, ...]
    destroyed: bool = False
    name: str = ""                      # the VM's name, when the VMM names it (vmd)
    memory: int = 0                     # the memory size asked for, when no slots (vmd)


@dataclass(frozen=True)
class WorkloadReport:
    """A parsed report: every event in order and the VMs grouped by cycle."""

    events: tuple[dict[str, Any], ...]
    cycles: tuple[tuple[VMReport, ...], ...]
    holds: int = 0                      # how many "hold" events were seen
    done: int | None = None             # status of the "done" event, if it came
    errors: tuple[str, ...] = ()        # messages of "error" events

    @property
    def vms(self) -> tuple[VMReport, ...]:
        """The VMs of the last cycle reported (the live ones while the workload holds)."""
        return self.cycles[-1] if self.cycles else ()

    def raise_on_error(self) -> None:
        """Raise InfraError if the workload reported an error."""
        if self.errors:
            raise InfraError("workload error: " + "; ".join(self.errors))


def _decode(text: str) -> dict[str, Any] | None:
    """The JSON object at the start of *text* (trailing junk ignored), or None."""
    try:
        obj, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


def _clean_lines(lines: Iterable[str]) -> list[str]:
    """Lines without ``\\r`` and terminal escapes."""
    out = []
    for line in lines:
        for part in _ESCAPE.sub("", line).replace("\r", "\n").split("\n"):
            out.append(part)
    return out


def _repair(payload: str, rest: list[str]) -> tuple[dict[str, Any] | None, int]:
    """Decode a report line cut by a kernel message: drop the message, join the next line.

    Returns the object and how many following lines were consumed.
    """
    for used in range(1, min(len(rest), 4) + 1):
        cut = _KMSG.search(payload)
        if cut is None:
            return None, 0
        payload = payload[: cut.start()] + rest[used - 1]
        obj = _decode(payload)
        if obj is not None:
            return obj, used
    return None, 0


def parse_events(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every ``@@SLAT`` event in order; an undecodable report line raises InfraError."""
    clean = [line for line in _clean_lines(lines) if line]
    events, i = [], 0
    while i < len(clean):
        at = clean[i].find(MARKER)
        if at >= 0:
            payload = clean[i][at + len(MARKER):]
            obj, used = _decode(payload), 0
            if obj is None:
                obj, used = _repair(payload, clean[i + 1:])
            if obj is None:
                raise InfraError(f"unreadable workload report line: {clean[i]!r}")
            events.append(obj)
            i += used
        i += 1
    return events


@dataclass
class _VMBuilder:
    """Accumulates one VM's events before it is frozen into a :class:`VMReport`."""

    index: int
    cycle: int
    pid: int
    name: str = ""
    memory: int = 0
    slots: dict[int, SlotReport] = field(default_factory=dict)
    pagemap: dict[int, int] = field(default_factory=dict)
    absent: list[int] = field(default_factory=list)
    code: list[int] = field(default_factory=list)
    exits: list[ExitReport] = field(default_factory=list)
    destroyed: bool = False

    def add(self, ev: dict[str, Any]) -> None:
        """Fold one event of this VM in."""
        kind = ev["event"]
        if kind == "slot":
            flags = tuple(f for f in str(ev.get("flags", "")).split("+") if f)
            self.slots[ev["slot"]] = SlotReport(ev["slot"], ev["gpa"], ev["size"],
                                                ev["hva"], flags)
        elif kind == "pagemap":
            for gpa, pfn, count in ev["runs"]:
                for k in range(count):
                    if pfn < 0:
                        self.absent.append(gpa + k * PAGE)
                    else:
                        self.pagemap[gpa + k * PAGE] = (pfn + k) * PAGE
        elif kind == "code":
            self.code.append(ev["gpa"])
        elif kind == "exit":
            addr = ev.get("gpa", ev.get("port"))
            write = bool(ev["write"]) if "write" in ev else None
            self.exits.append(ExitReport(ev["reason"], addr, write))
        elif kind == "destroyed":
            self.destroyed = True

    def freeze(self) -> VMReport:
        """The immutable report."""
        return VMReport(self.index, self.cycle, self.pid,
                        tuple(self.slots[k] for k in sorted(self.slots)), dict(self.pagemap),
                        tuple(self.absent), tuple(self.code), tuple(self.exits),
                        self.destroyed, self.name, self.memory)


def _group(events: list[dict[str, Any]]) -> list[dict[int, _VMBuilder]]:
    """The events of each VM, grouped by cycle (a ``vm`` event opens a VM)."""
    cycles: list[dict[int, _VMBuilder]] = []
    for ev in events:
        if ev["event"] == "vm":
            cycle = ev.get("cycle", 0)
            while len(cycles) <= cycle:
                cycles.append({})
            cycles[cycle][ev["vm"]] = _VMBuilder(ev["vm"], cycle, ev["pid"],
                                                 str(ev.get("name", "")),
                                                 int(ev.get("memory", 0)))
        elif "vm" in ev:
            owner = next((c[ev["vm"]] for c in reversed(cycles) if ev["vm"] in c), None)
            if owner is None:
                raise InfraError(f"workload event for vm {ev['vm']} before its 'vm' event: {ev}")
            owner.add(ev)
    return cycles


def parse_report(lines: Iterable[str]) -> WorkloadReport:
    """Parse the workload's report out of console or file lines."""
    events = parse_events(lines)
    try:
        cycles = _group(events)
    except (KeyError, TypeError, ValueError) as exc:
        raise InfraError(f"malformed workload event: {exc!r}") from exc
    done = [ev.get("status") for ev in events if ev["event"] == "done"]
    return WorkloadReport(
        events=tuple(events),
        cycles=tuple(tuple(b.freeze() for _, b in sorted(c.items())) for c in cycles),
        holds=sum(ev["event"] == "hold" for ev in events),
        done=done[-1] if done else None,
        errors=tuple(str(ev.get("msg", "")) for ev in events if ev["event"] == "error"))
