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

from harness.images.recipe import KernelSource

__all__ = [
    "StepSpec", "BootStep", "ShellStep", "WaitStep", "SlotSpec", "TouchSpec", "WorkloadStep",
    "CheckStep", "InjectStep", "ReleaseStep", "Step", "STEP_TYPES", "GuestSpec",
    "MachineSpec", "Timeouts", "ExpectedFinding", "Expect", "Scenario", "HOLD_MODES",
    "DEFAULT_MEMORY", "RaceSpec", "RACE_MODES", "MidPoint", "IntRange", "FloatRange",
    "VarySpec",
]

DEFAULT_MEMORY = 1 << 30          # L1 RAM when the scenario names none
HOLD_MODES = ("last", "each", "none")
# teardown races of the workload: what another thread does while the vCPUs touch pages
RACE_MODES = ("delete_slot", "move_slot", "close_vm", "munmap", "dontneed", "mprotect")


@dataclass(frozen=True)
class StepSpec:
    """What every step has: its place in the file, a label and an optional timeout."""

    kind: ClassVar[str] = ""
    index: int                    # 0-based position in `steps`
    line: int                     # line of the step in the file
    name: str = ""                # label given by the scenario
    timeout: float | None = None  # seconds; None: the scenario's `timeouts.step`
    delay: float = 0.0            # seconds to let L1 run before the step (vary.delay)

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
class IntRange:
    """An inclusive range of integers a value is drawn from (``lo == hi``: fixed)."""

    lo: int
    hi: int


@dataclass(frozen=True)
class FloatRange:
    """An inclusive range of seconds a value is drawn from (``lo == hi``: fixed)."""

    lo: float
    hi: float


@dataclass(frozen=True)
class RaceSpec:
    """A teardown race: vCPU threads keep touching pages while another thread acts.

    After the first hold (the VMs intact), each VM's vCPUs run the guest code in a
    loop; after a delay drawn from *delay_us* the racer thread does *mode* to slot
    *slot* (``close_vm``: to the whole VM), the vCPUs go on for *after_us*, then the
    workload reports what happened when, and holds again.
    """

    mode: str                      # one of RACE_MODES
    slot: int                      # index of the raced slot in the workload's slots
    delay_us: IntRange             # microseconds between the vCPUs' start and the action
    after_us: int = 2000           # microseconds the vCPUs go on after the action
    to: int | None = None          # move_slot: the slot's new GPA (filled in at load)


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
    vcpus: int = 1                # vCPUs per VM
    race: RaceSpec | None = None  # a teardown race after the (first) hold of each cycle
    seed: int | None = None       # the race's random delays (set per run from the run's seed)

    @property
    def holds(self) -> int:
        """How many times the workload holds (and must be released); a race holds twice
        per held cycle: before the race and after it."""
        base = {"last": 1, "each": self.cycles, "none": 0}[self.hold]
        return base * (2 if self.race is not None else 1)

    def vms_at_hold(self, hold: int) -> int:
        """VMs alive at its *hold*-th hold (0-based): after a ``close_vm`` race, none."""
        if self.race is not None and self.race.mode == "close_vm" and hold % 2 == 1:
            return 0
        return self.vms


@dataclass(frozen=True)
class MidPoint:
    """When a check during a release halts L1: at a kernel function, or after a delay."""

    symbol: str | None = None     # a breakpoint at this kernel function ...
    hits: int = 1                 # ... at its hits-th call
    delay: float | None = None    # or this many seconds after the release was sent

    @property
    def label(self) -> str:
        """``kvm_destroy_vm (hit 1)`` or ``0.05 s into the release``."""
        if self.symbol is not None:
            return f"{self.symbol} (hit {self.hits})"
        return f"{self.delay or 0:g} s into the release"


@dataclass(frozen=True)
class CheckStep(StepSpec):
    """Extract the nested tables and compare them with the model."""

    kind: ClassVar[str] = "check"
    vms: int | None = None        # VMs discovery must find; None: every held VM
    during: str | None = None     # release this workload and check in the middle of it
    at: MidPoint | None = None    # with during: when L1 is halted


@dataclass(frozen=True)
class InjectStep(StepSpec):
    """Corrupt the leaf that maps a GPA of one held VM."""

    kind: ClassVar[str] = "inject"
    corruption: str = "frame"     # "frame", "permission", "clear", "reserved_bit", "memtype"
    gpa: int = 0
    workload: str = ""            # the workload whose VM is corrupted
    vm: int = 0                   # index of the VM within that workload
    permission: str = "w"         # for "permission": the bit taken away
    restore: bool = True          # put the entry back after the next check
    # for "frame", at most one of: the frame backing this GPA of the same VM, or this L1
    # physical address (None and None: the leaf's neighbouring frame)
    to_gpa: int | None = None
    to_hpa: int | None = None
    probability: float = 1.0      # chance that it fires (drawn from the run's seed)


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
    """The L1 guest: operating system, image, extra kernel command-line words, and the
    kernel under test when it is not the image recipe's (a build tree, a .deb, a boot
    image: :mod:`harness.images.kernel`)."""

    os: str
    image: str
    append: str = ""
    kernel: KernelSource | None = None


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
class VarySpec:
    """Ranges the workloads' parameters and the pauses between steps are drawn from.

    Each run (each iteration of a repeated run) draws its values from its own seed
    (:mod:`harness.vary`); ``None`` leaves the scenario's own value.
    """

    threads: tuple[bool, ...] | None = None   # choices
    vms: IntRange | None = None
    vcpus: IntRange | None = None
    cycles: IntRange | None = None
    touch_order: str = "fixed"                # "fixed" or "shuffle"
    delay: FloatRange | None = None           # seconds before each step after boot
    workloads: tuple[str, ...] = ()           # the workloads varied (default: all)


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
    vary: VarySpec | None = None  # ranges drawn per run (harness.vary)
    seed: int | None = None       # fixed seed of every run (a reproducer's)
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
