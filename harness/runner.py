"""Run one scenario: build the image, boot, execute the steps, judge, keep the evidence.

Everything a run starts is owned by a context manager (`contextlib.ExitStack`),
so a crash, a timeout or Ctrl-C leaves no QEMU or GDB behind, and the
artifacts (console log, extracted state, findings) are written in `finally`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.artifacts import make_run_dir, write_json
from harness.errors import FindingsError, InfraError, ScenarioError, SlatcheckError
from harness.findings import Finding
from harness.result import ScenarioResult
from harness.scenario import Scenario, Step

__all__ = ["run_scenario", "RunContext", "STEP_HANDLERS", "StepTimeout"]


class StepTimeout(InfraError):
    """A step or the whole scenario ran past its timeout (verdict ``timeout``)."""


@dataclass
class RunContext:
    """What the steps of one run share."""

    scenario: Scenario
    run_dir: Path
    stack: ExitStack
    image: Any = None                 # harness.images.Image
    machine: Any = None               # harness.qemu.Machine
    console: Any = None               # harness.console.Console
    gdb: Any = None                   # harness.gdb.GdbSession, attached lazily
    workloads: dict[str, Any] = field(default_factory=dict)   # id -> WorkloadRun
    injected: list[Any] = field(default_factory=list)          # injections to restore
    checks: list[dict[str, Any]] = field(default_factory=list)  # slat.json "checks"
    findings: list[Finding] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)        # kallsyms, BTF, ...
    deadline: float = 0.0
    finding_step: str = ""            # label of the first step that reported findings

    def step_timeout(self, step: Step) -> float:
        """The step's own timeout, bounded by what is left of the scenario's."""
        t = step.timeout or self.scenario.timeouts["step"]
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StepTimeout(f"scenario timeout ({self.scenario.timeouts['scenario']} s) "
                              f"reached before {step.label}")
        return min(t, left)

    def add_phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds


StepHandler = Callable[[RunContext, Step], None]
STEP_HANDLERS: dict[str, StepHandler] = {}


def _handler(kind: str) -> Callable[[StepHandler], StepHandler]:
    def deco(fn: StepHandler) -> StepHandler:
        STEP_HANDLERS[kind] = fn
        return fn
    return deco


def _verdict_for(exc: BaseException) -> str:
    """Map an exception to a verdict (see harness.result.VERDICTS)."""
    from harness.console import ConsoleTimeout, GuestCommandError, GuestPanic
    if isinstance(exc, GuestCommandError):   # a harness-driven guest command failed
        return "error"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, GuestPanic):
        return "panic"
    if isinstance(exc, (StepTimeout, ConsoleTimeout)):
        return "timeout"
    if isinstance(exc, FindingsError):
        return "fail"
    if isinstance(exc, ScenarioError):
        return "scenario-error"
    return "error"


def _finish(ctx: RunContext, res: ScenarioResult) -> None:
    """Write every artifact we have, whatever happened."""
    from harness.check import slat_json
    res.findings = list(ctx.findings)
    res.phases = dict(ctx.phases)
    res.properties.update(ctx.properties)
    res.artifacts = ctx.run_dir
    write_json(ctx.run_dir / "slat.json", slat_json(ctx))
    write_json(ctx.run_dir / "findings.json", [f.to_json() for f in ctx.findings])
    write_json(ctx.run_dir / "result.json", {
        "scenario": res.name, "file": str(res.path), "verdict": res.verdict,
        "message": res.message, "failed_step": res.failed_step,
        "duration": round(res.duration, 3), "phases": {k: round(v, 3)
                                                         for k, v in res.phases.items()},
        "properties": res.properties, "findings": len(res.findings)})


def run_scenario(sc: Scenario, artifacts_root: Path) -> ScenarioResult:
    """Run *sc*; never raises for the run's own failures.

    Ctrl-C ends the run with verdict ``interrupted`` after cleanup and
    artifacts; the CLI then stops and still writes the JUnit file.
    """
    t0 = time.monotonic()
    run_dir = make_run_dir(artifacts_root, sc.name)
    res = ScenarioResult(name=sc.name, path=sc.path, expect=sc.expect)
    with ExitStack() as stack:
        ctx = RunContext(scenario=sc, run_dir=run_dir, stack=stack,
                         deadline=t0 + sc.timeouts["scenario"])
        current: Step | None = None
        try:
            for current in sc.steps:
                ts = time.monotonic()
                STEP_HANDLERS[current.kind](ctx, current)
                ctx.add_phase(current.kind, time.monotonic() - ts)
            current = None
            res.verdict = "fail" if ctx.findings else "pass"
            if ctx.findings:
                res.message = f"{len(ctx.findings)} finding(s)"
                res.failed_step = ctx.finding_step
        except KeyboardInterrupt:
            res.verdict, res.message = "interrupted", "interrupted (SIGINT)"
        except (SlatcheckError, OSError, ValueError, KeyError, RuntimeError,
                TimeoutError) as e:
            res.verdict = _verdict_for(e)
            res.message = f"{type(e).__name__}: {e}"
            if res.verdict == "panic":
                ctx.findings.append(Finding("panic", "-", None, None, None,
                                            detail=str(e)[:2000]))
        finally:
            if current is not None and res.verdict != "pass":
                res.failed_step = current.label
            res.duration = time.monotonic() - t0
            try:
                stack.close()   # GDB, then QEMU, in reverse order of start
            finally:
                res.duration = time.monotonic() - t0
                _finish(ctx, res)
    return res


# -- step handlers -------------------------------------------------------------------------
# Imported for their registration side effect; kept in their own modules.
from harness import steps as _steps  # noqa: E402,F401
