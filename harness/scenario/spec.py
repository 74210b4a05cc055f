"""A scenario after validation: frozen records, one class per step kind, defaults applied.

Nothing downstream of :func:`harness.scenario.load_scenario` sees raw YAML: every
number is parsed, every default is filled in here (and only here), and every
name was checked against its registry.

>>> s = ShellStep(index=1, line=7, cmd="uname -r")
>>> s.label, s.status
('step 2 (shell) at line 7', 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

__all__ = [
    "StepSpec", "BootStep", "ShellStep", "WaitStep", "SlotSpec", "TouchSpec", "WorkloadStep",
    "CheckStep", "InjectStep", "ReleaseStep", "Step", "STEP_TYPES", "GuestSpec",
    "MachineSpec", "Timeouts", "ExpectedFinding", "Expect", "Scenario", "HOLD_MODES",
    "DEFAULT_MEMORY",
]

DEFAULT_MEMORY = 1 << 30          # L1 RAM when the scenario names none
HOLD_MODES = ("last", "each", "none")


@dataclass(frozen=True)
class StepSpec:
    """What every step has: its place in the file, a label and an optional timeout."""

    kind: ClassVar[str] = ""
    index: int                    # 0-based position in `steps`
    line: int                     # line of the step in the file
    name: str = ""                # label given by the scenario
    timeout: float | None = None  # seconds; None: the scenario's `timeouts.step`

    @property
    def label(self) -> str:
        """How reports name the step: ``step 3 (check) at line 27``."""
        extra = f" '{self.name}'" if self.name else ""
        return f"step {self.index + 1} ({self.kind}{extra}) at line {self.line}"


@dataclass(frozen=True)
class BootStep(StepSpec):
    """Build (or reuse) the image, start the machine, wait for the shell."""

    kind: ClassVar[str] = "boot"


@dataclass(frozen=True)
class ShellStep(StepSpec):
    """One guest shell command; its status and (optionally) its output must match."""

    kind: ClassVar[str] = "shell"
    cmd: str = ""
    expect: str | None = None     # regex searched in the output (multiline)
    status: int = 0               # expected exit status


@dataclass(frozen=True)
class WaitStep(StepSpec):
    """Wait for a regex on the console."""

    kind: ClassVar[str] = "wait"
    pattern: str = ""


@dataclass(frozen=True)
class SlotSpec:
    """One memory slot of every VM of a workload."""

    gpa: int
    size: int
    flags: tuple[str, ...] = ()   # "ro", "log", "huge"

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass(frozen=True)
class TouchSpec:
    """One access the L2 guest makes: "r", "w" or "x" at a GPA."""

    gpa: int
    access: str


@dataclass(frozen=True)
class WorkloadStep(StepSpec):
    """Start the KVM workload in the guest's background."""

    kind: ClassVar[str] = "workload"
    id: str = "w1"
    driver: str = "slat-workload"  # "vmd"/"bhyvectl": a VM the size of the one slot
    vms: int = 1
    threads: bool = False
    cycles: int = 1
    hold: str = "last"            # "last": hold the last cycle; "each": every cycle; "none"
    ipa_bits: int | None = None   # arm64 only
    slots: tuple[SlotSpec, ...] = ()
    touch: tuple[TouchSpec, ...] = ()

    @property
    def holds(self) -> int:
        """How many times the workload holds (and must be released)."""
        return {"last": 1, "each": self.cycles, "none": 0}[self.hold]


@dataclass(frozen=True)
class CheckStep(StepSpec):
    """Extract the nested tables and compare them with the model."""

    kind: ClassVar[str] = "check"
    vms: int | None = None        # VMs discovery must find; None: every held VM


@dataclass(frozen=True)
class InjectStep(StepSpec):
    """Corrupt the leaf that maps a GPA of one held VM."""

    kind: ClassVar[str] = "inject"
    corruption: str = "frame"     # "frame", "permission", "clear", "reserved_bit"
    gpa: int = 0
    workload: str = ""            # the workload whose VM is corrupted
    vm: int = 0                   # index of the VM within that workload
    permission: str = "w"         # for "permission": the bit taken away
    restore: bool = True          # put the entry back after the next check


@dataclass(frozen=True)
class ReleaseStep(StepSpec):
    """Let held workloads go on: to their next cycle's hold, or to exit."""

    kind: ClassVar[str] = "release"
    workload: str | None = None   # None: every held workload


Step = BootStep | ShellStep | WaitStep | WorkloadStep | CheckStep | InjectStep | ReleaseStep
STEP_TYPES: dict[str, type[StepSpec]] = {
    t.kind: t for t in (BootStep, ShellStep, WaitStep, WorkloadStep, CheckStep, InjectStep,
                        ReleaseStep)}


@dataclass(frozen=True)
class GuestSpec:
    """The L1 guest: operating system, image and extra kernel command-line words."""

    os: str
    image: str
    append: str = ""


@dataclass(frozen=True)
class MachineSpec:
    """The L0 machine that runs the L1."""

    emulator: str = "qemu"
    accel: str = "tcg"
    cpu: str | None = None        # None: the architecture's default
    memory: int = DEFAULT_MEMORY  # bytes
    smp: int = 1
    vmrun_log: bool | None = None  # None: on where the emulator and arch offer it


@dataclass(frozen=True)
class Timeouts:
    """Seconds."""

    boot: float = 180.0
    step: float = 120.0
    scenario: float = 1200.0


@dataclass(frozen=True)
class ExpectedFinding:
    """A finding a negative scenario must produce."""

    kind: str
    gpa: int | None = None        # inside the finding's [gpa, end)
    workload: str | None = None   # with vm: the finding's VM
    vm: int | None = None

    @property
    def vm_label(self) -> str | None:
        """The finding's ``vm`` field this names (``w1/vm0``), or None."""
        if self.workload is None and self.vm is None:
            return None
        return f"{self.workload or 'w1'}/vm{self.vm or 0}"


@dataclass(frozen=True)
class Expect:
    """How the run must come out (negative scenarios expect findings)."""

    verdict: str = "pass"
    findings: tuple[ExpectedFinding, ...] = ()


@dataclass(frozen=True)
class Scenario:
    """A validated scenario."""

    path: Path
    name: str
    guest: GuestSpec
    hypervisor: str               # resolved: named, or the default for the guest
    model: str                    # resolved: named, or the hypervisor's default
    steps: tuple[Step, ...]
    description: str = ""
    machine: MachineSpec = MachineSpec()
    timeouts: Timeouts = Timeouts()
    expect: Expect = Expect()
    lines: dict[tuple[object, ...], int] = field(default_factory=dict, compare=False,
                                                 repr=False)

    def line_of(self, *path: object) -> int:
        """The line of the value at *path* (or the nearest enclosing one)."""
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    @property
    def workloads(self) -> tuple[WorkloadStep, ...]:
        """The workload steps, in order."""
        return tuple(s for s in self.steps if isinstance(s, WorkloadStep))
