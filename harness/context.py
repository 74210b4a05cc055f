"""What the steps of one run share, typed: the run context.

Each service has its type (machine, console, target, image), and is reached
through a method that says what is missing when it is not there yet
(``ctx.console()`` before ``boot`` is an infrastructure error, not an
``AttributeError``).  What is read once per boot (symbols, types, facts) is
held in :class:`KernelFacts`, not in a string-keyed cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.console import Console
from harness.errors import HarnessTimeout, InfraError
from harness.findings import Finding
from harness.guests.record import GuestOS
from harness.hypervisors import Hypervisor
from harness.images import Image
from harness.images.recipe import KernelSource
from harness.ktypes import KernelTypes
from harness.machines.base import Machine, MachineFactory
from harness.models.base import Model
from harness.oracles import TableHistory
from harness.registry import Registry
from harness.scenario.spec import Scenario, StepSpec, WorkloadStep
from harness.target import Target
from harness.warm import WarmState
from harness.workload import VMReport, WorkloadReport

__all__ = ["RunContext", "WorkloadRun", "KernelFacts", "Injection", "StepTimeout", "Progress",
           "DETAIL",
           "Services", "default_services"]

Progress = Callable[[str], None]
DETAIL = "· "      # a progress line that starts with it is detail: printed with -v only
ImageBuilder = Callable[[str, Progress], Image]
KernelImageBuilder = Callable[[str, KernelSource, Progress], Image]


@dataclass(frozen=True)
class Services:
    """What a run resolves by name: the registries and the image builder.

    The CLI and the pytest plugin use :func:`default_services`; tests hand in
    registries holding fakes (a scripted machine, a hypervisor over constructed
    memory) instead of monkeypatching.
    """

    guests: Registry[GuestOS]
    hypervisors: Registry[Hypervisor]
    models: Registry[Model]
    machines: Registry[MachineFactory]
    build_image: ImageBuilder
    states: Path | None = None     # cache root of saved machine states (None: the user's)
    # the image with a kernel given by path (guest.kernel, --kernel); None: cannot
    build_kernel_image: KernelImageBuilder | None = None


def default_services() -> Services:
    """The real registries and the cached image builder."""
    from harness.guests import GUEST_OSES
    from harness.hypervisors import HYPERVISORS
    from harness.images import build_image
    from harness.images.build import build_image as build_linux
    from harness.machines import MACHINES
    from harness.models import MODELS
    return Services(GUEST_OSES, HYPERVISORS, MODELS, MACHINES,
                    lambda name, progress: build_image(name, progress=progress),
                    build_kernel_image=lambda name, kernel, progress: build_linux(
                        name, progress=progress, kernel=kernel))


class StepTimeout(HarnessTimeout):
    """A step or the whole scenario ran past its timeout (verdict ``timeout``)."""


@dataclass
class WorkloadRun:
    """A workload started in the background of the guest shell."""

    spec: WorkloadStep
    out: str                       # guest file with its report
    fifo: str                      # guest FIFO it reads "go" from when it holds
    pid: int = 0                   # its process id in the guest
    report: WorkloadReport | None = None
    holds_left: int = 0            # holds still to be released
    status: int | None = None      # exit status, once it exited

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def exited(self) -> bool:
        return self.status is not None

    @property
    def holding(self) -> bool:
        """Whether its VMs are alive and held right now."""
        return not self.exited and self.report is not None and self.holds_left > 0 \
            and self.report.holds > self.spec.holds - self.holds_left

    def held_vms(self) -> tuple[VMReport, ...]:
        """The VMs it holds now (the last cycle reported, but not those its race closed)."""
        if not self.holding or self.report is None:
            return ()
        return tuple(v for v in self.report.vms if not v.destroyed)

    def gone_vms(self) -> tuple[VMReport, ...]:
        """Every VM it created and destroyed (or let go) so far."""
        if self.report is None:
            return ()
        live = set(id(v) for v in self.held_vms())
        return tuple(v for cycle in self.report.cycles for v in cycle if id(v) not in live)


@dataclass(frozen=True)
class KernelFacts:
    """What is read once per boot, while L1 runs: symbols, types, facts."""

    symbols: Mapping[str, int]
    types: KernelTypes
    facts: Mapping[str, int]


@dataclass(frozen=True)
class Injection:
    """A corrupted entry and what to put back."""

    addr: int                      # physical address of the entry
    original: int
    corrupted: int
    gpa: int
    corruption: str                # "frame", "permission", ...
    restore: bool


@dataclass
class RunContext:
    """The state of one scenario run."""

    scenario: Scenario
    run_dir: Path
    stack: ExitStack               # owns the machine, console and target
    guest: GuestOS
    hypervisor: Hypervisor
    model: Model
    deadline: float                # time.monotonic() at which the scenario times out
    services: Services
    progress: Progress = print
    image: Image | None = None
    machine: Machine | None = None
    kernel: KernelFacts | None = None
    workloads: dict[str, WorkloadRun] = field(default_factory=dict)
    injected: list[Injection] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)   # slat.json "checks"
    findings: list[Finding] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    finding_step: str = ""         # label of the first step that reported findings
    seed: int = 0                  # what this run drew its values from (harness.vary)
    keep_failure: bool = False     # a failing check leaves its injections in place
    tables: TableHistory = field(default_factory=TableHistory)  # entries of VMs seen live
    warm_starts: bool = True       # start from a saved state when there is one (--cold: no)
    warm: WarmState | None = None  # the saved state this run's boot belongs to, if any
    boot_id: str | None = None     # the guest's boot id, when warm starts are in play
    _console: Console | None = None
    _target: Target | None = None
    _ram: list[tuple[int, int]] | None = None

    # -- services ------------------------------------------------------------------

    def attach_console(self, console: Console) -> None:
        """The console, once the machine runs (boot)."""
        self._console = console

    def console(self) -> Console:
        """The guest console; an InfraError before boot."""
        if self._console is None:
            raise InfraError("no guest console: the scenario has not booted")
        return self._console

    def require_machine(self) -> Machine:
        """The machine; an InfraError before boot."""
        if self.machine is None:
            raise InfraError("no machine: the scenario has not booted")
        return self.machine

    def require_image(self) -> Image:
        """The image; an InfraError before boot."""
        if self.image is None:
            raise InfraError("no image: the scenario has not booted")
        return self.image

    def target(self) -> Target:
        """The debug target, attached on first use (booting does not need it)."""
        if self._target is None:
            self._target = self.stack.enter_context(
                self.require_machine().open_target(self.run_dir))
        return self._target

    def carry_over(self, later: RunContext) -> None:
        """Keep what *later* (an iteration run in this context's boot) attached or read
        once per boot: the debug target, the RAM ranges, the kernel facts."""
        self.kernel = later.kernel
        self._target = later._target
        self._ram = later._ram

    def ram(self) -> list[tuple[int, int]]:
        """The L1's RAM ranges, asked once."""
        if self._ram is None:
            self._ram = self.target().ram_ranges()
        return self._ram

    # -- time ------------------------------------------------------------------------

    def step_timeout(self, step: StepSpec) -> float:
        """The step's own timeout, bounded by what is left of the scenario's."""
        t = step.timeout or self.scenario.timeouts.step
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepTimeout(f"scenario timeout ({self.scenario.timeouts.scenario:g} s) "
                              f"reached before {step.label}")
        return min(t, left)

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds
