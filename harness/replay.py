"""Replay a kept failure offline: discovery, model and diff on a saved core, no emulator.

When ``--keep-on-failure`` keeps a failing iteration, :func:`save_core` writes into its
``core/`` directory: ``l1.core`` (an ELF core of L1's physical memory, written by the
machine while L1 was stopped), and beside it what a check needs that is not memory:
``core.json`` (the architecture, guest, hypervisor and model; the halted CPU's
registers, settled in the kernel; the RAM ranges; the kernel symbols and facts read
that boot; each workload's state), ``types.pickle`` (the kernel's types as the check
used them), the workloads' reports, the iteration's scenario and the emulator's
nested-paging log.

``slatcheck replay RUN_DIR`` (:func:`replay`) builds a run context whose machine is
the core (:class:`CoreMachine`; its target :class:`CoreTarget` reads the core and
translates kernel addresses through the saved page-table registers,
:mod:`harness.kva`) and runs the ``check`` of :mod:`harness.check` on it: the same
observer, model, diff and oracles as live, so a fix to any of them can be verified on
the state that failed, without the race.  ``types.pickle`` is a Python pickle:
replay only run directories you made yourself.
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from harness.arch import ARCHES, Arch
from harness.artifacts import write_json
from harness.check import kernel_facts, run_check, slat_json
from harness.console import ConsoleEndpoint
from harness.context import (
    KernelFacts,
    Progress,
    RunContext,
    Services,
    WorkloadRun,
    default_services,
)
from harness.elfcore import CoreFile
from harness.errors import InfraError, verdict_of
from harness.kva import VA_WALKERS, VaWalker
from harness.machines.base import KernelBoot, MachineConfig
from harness.result import ScenarioResult
from harness.scenario import load_scenario
from harness.scenario.spec import CheckStep, Scenario
from harness.target import Leavable, Target, settle_in_kernel
from harness.workload import parse_report

__all__ = ["Keepable", "save_core", "CoreTarget", "CoreMachine", "find_core", "replay",
           "CORE_DIR", "CORE_FILE"]

CORE_DIR = "core"
CORE_FILE = "l1.core"
FORMAT = 1


@runtime_checkable
class Keepable(Protocol):
    """An optional capability of a Machine: stay around stopped, for a person's debugger."""

    def debug_socket(self) -> Path:
        """Where a debugger attaches (the gdbstub)."""
        ...

    def dump_core(self, path: Path) -> None:
        """Write L1's physical memory as an ELF core to *path* (L1 stays as it is)."""
        ...


# ---- saving -------------------------------------------------------------------------------

def _registers(target: Target, walker: VaWalker, arch: Arch) -> dict[str, int]:
    out = {}
    for name in dict.fromkeys(walker.registers + arch.mode_registers):
        with contextlib.suppress(InfraError):
            out[name] = target.register(name)
    return out


def _workloads(ctx: RunContext, out: Path) -> list[dict[str, Any]]:
    saved = []
    for run in ctx.workloads.values():
        report = ctx.run_dir / f"workload-{run.id}.out"
        if report.exists():
            shutil.copy(report, out / report.name)
        saved.append({"id": run.id, "report": report.name, "out": run.out, "fifo": run.fifo,
                      "pid": run.pid, "holds_left": run.holds_left, "status": run.status})
    return saved


def save_core(ctx: RunContext, machine: Keepable, out: Path, scenario_file: Path) -> Path:
    """Stop L1 in the kernel, dump its memory and what a check needs; leave L1 stopped."""
    out.mkdir(parents=True, exist_ok=True)
    arch = ctx.hypervisor.arch_record
    kernel = kernel_facts(ctx)
    target = ctx.target()
    with target.halted():
        settle_in_kernel(target, arch.mode_registers, arch.in_kernel)
        regs = _registers(target, VA_WALKERS[arch.name], arch)
        machine.dump_core(out / CORE_FILE)
        if isinstance(target, Leavable):
            target.leave_stopped()
    (out / "types.pickle").write_bytes(pickle.dumps(kernel.types))
    shutil.copy(scenario_file, out / "scenario.yaml")
    fault = ctx.require_machine().fault_log
    if fault is not None and fault.exists():
        shutil.copy(fault, out / "fault.log")
    write_json(out / "core.json", {
        "format": FORMAT, "arch": arch.name, "guest": ctx.guest.name,
        "hypervisor": ctx.hypervisor.name, "model": ctx.model.name,
        "registers": {k: f"{v:#x}" for k, v in regs.items()},
        "ram": [list(r) for r in ctx.ram()],
        "symbols": {k: f"{kernel.symbols[k]:#x}" for k in kernel.symbols},
        "facts": dict(kernel.facts), "failed_step": ctx.finding_step,
        "workloads": _workloads(ctx, out),
        "fault_log": "fault.log" if (out / "fault.log").exists() else None,
        "findings": len(ctx.findings), "seed": ctx.seed})
    return out


# ---- the core as a Target and a Machine ----------------------------------------------------

class CoreTarget:
    """A :class:`~harness.target.Target` over a saved core: stopped for ever, read-only."""

    def __init__(self, core: CoreFile, registers: Mapping[str, int], walker: VaWalker,
                 ram: list[tuple[int, int]]) -> None:
        self.core = core
        self.registers = dict(registers)
        self.walker = walker
        self.ram = ram

    def halted(self) -> contextlib.AbstractContextManager[None]:
        """Always halted."""
        return contextlib.nullcontext()

    def read_phys(self, addr: int, size: int) -> bytes:
        """From the core."""
        return self.core.read(addr, size)

    def translate(self, va: int) -> int:
        """Through the saved page-table registers."""
        return self.walker.translate(self.core, self.registers, va)

    def read_virt(self, addr: int, size: int) -> bytes:
        """Page by page through :meth:`translate`."""
        out = bytearray()
        while size:
            n = min(size, 0x1000 - (addr & 0xFFF))
            out += self.core.read(self.translate(addr), n)
            addr, size = addr + n, size - n
        return bytes(out)

    def write_phys(self, addr: int, data: bytes) -> None:
        """A core is evidence: never written."""
        raise InfraError("a saved core is read-only")

    def register(self, name: str, cpu: int | None = None) -> int:
        """As saved (the CPU the harness halted in the kernel)."""
        if cpu not in (None, 0) or name not in self.registers:
            raise InfraError(f"register {name} (cpu {cpu}) was not saved with the core")
        return self.registers[name]

    def ram_ranges(self) -> list[tuple[int, int]]:
        """As saved."""
        return list(self.ram)

    def nudge(self) -> None:
        """A saved L1 cannot run."""
        raise InfraError("a saved core cannot run: it was saved with the CPU in the kernel")


@dataclass
class CoreMachine:
    """The Machine contract over a saved core: nothing runs, the target reads the file."""

    config: MachineConfig
    target: CoreTarget
    saved_fault_log: Path | None

    def __enter__(self) -> CoreMachine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.target.core.close()

    def alive(self) -> bool:
        return False

    @property
    def console(self) -> ConsoleEndpoint:
        raise InfraError("a saved core has no console")

    @contextlib.contextmanager
    def open_target(self, log_dir: Path) -> Iterator[Target]:
        yield self.target

    @property
    def fault_log(self) -> Path | None:
        return self.saved_fault_log

    def save_state(self, path: Path) -> None:
        raise InfraError("a saved core is already saved")

    def describe(self) -> dict[str, str]:
        return {"emulator": "core file", "core": str(self.target.core.path)}

    def state_key(self) -> dict[str, str] | None:
        """A core is not a machine to warm-start."""
        return None


# ---- replay ---------------------------------------------------------------------------------

def find_core(run_dir: Path) -> Path:
    """The ``core/`` directory of a run directory (or of one of its iterations)."""
    if (run_dir / "core.json").exists():
        return run_dir
    found = sorted(run_dir.glob(f"{CORE_DIR}/core.json")) + \
        sorted(run_dir.glob(f"iter-*/{CORE_DIR}/core.json"))
    if not found:
        raise InfraError(f"{run_dir}: no saved core (run with --keep-on-failure to keep one)")
    return found[0].parent


def _workload_runs(sc: Scenario, core: Path, saved: list[dict[str, Any]]) -> dict[str, WorkloadRun]:
    specs = {w.id: w for w in sc.workloads}
    runs = {}
    for w in saved:
        text = (core / w["report"]).read_text() if (core / w["report"]).exists() else ""
        runs[w["id"]] = WorkloadRun(spec=specs[w["id"]], out=w["out"], fifo=w["fifo"],
                                    pid=w["pid"], report=parse_report(text.splitlines()),
                                    holds_left=w["holds_left"], status=w["status"])
    return runs


def _context(core: Path, meta: dict[str, Any], out: Path, progress: Progress,
             services: Services) -> RunContext:
    sc = load_scenario(core / "scenario.yaml")
    arch = ARCHES[meta["arch"]]
    regs = {k: int(v, 16) for k, v in meta["registers"].items()}
    ram = [(int(lo), int(hi)) for lo, hi in meta["ram"]]
    target = CoreTarget(CoreFile(core / CORE_FILE), regs, VA_WALKERS[arch.name], ram)
    config = MachineConfig(arch=arch, boot=KernelBoot(core / CORE_FILE), artifacts=out,
                           cpu="core")
    stack = ExitStack()
    machine = stack.enter_context(CoreMachine(config, target, core / meta["fault_log"]
                                              if meta.get("fault_log") else None))
    types = pickle.loads((core / "types.pickle").read_bytes())   # noqa: S301 - our own file
    kernel = KernelFacts(symbols={k: int(v, 16) for k, v in meta["symbols"].items()},
                         types=types, facts=meta["facts"])
    return RunContext(scenario=sc, run_dir=out, stack=stack, guest=services.guests[meta["guest"]],
                      hypervisor=services.hypervisors[meta["hypervisor"]],
                      model=services.models[meta["model"]], deadline=math.inf,
                      services=services, progress=progress, machine=machine, kernel=kernel,
                      workloads=_workload_runs(sc, core, meta["workloads"]))


def replay(run_dir: Path, progress: Progress = print,
           services: Services | None = None) -> ScenarioResult:
    """Check the saved core of *run_dir* again (into ``core/replay-N/``); *services*: the
    registries (tests give fakes)."""
    core = find_core(run_dir)
    meta = json.loads((core / "core.json").read_text())
    n = 1 + len(list(core.glob("replay-*")))
    out = core / f"replay-{n}"
    out.mkdir()
    res = ScenarioResult(name=f"replay of {core}", path=core / "scenario.yaml",
                         hypervisor=meta["hypervisor"])
    ctx = _context(core, meta, out, progress, services or default_services())
    step = CheckStep(index=0, line=0, name=f"replay of {meta['failed_step'] or 'the core'}")
    with ctx.stack:
        try:
            run_check(ctx, step)
            res.verdict = "fail" if ctx.findings else "pass"
            res.message = (f"{len(ctx.findings)} finding(s) on the saved core; the live "
                           f"iteration had {meta['findings']}")
        except BaseException as e:  # noqa: BLE001 - the outermost layer of a command
            res.verdict, res.message = verdict_of(e), f"{type(e).__name__}: {e}"
    res.findings = list(ctx.findings)
    res.artifacts = out
    write_json(out / "slat.json", slat_json(ctx))
    write_json(out / "findings.json", res.findings_json())
    write_json(out / "result.json", res.to_json())
    return res
