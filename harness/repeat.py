"""Repeat a scenario inside one boot: iterations with their own seeds, rates, reproducers.

``slatcheck run --repeat N | --until-fail | --duration T`` boots the L1 once and runs
the steps after ``boot`` again and again (``--reboot-every K`` boots anew every *K*
iterations; an iteration that ended in a panic, a timeout or an infrastructure error
boots anew before the next).  Each iteration draws its values from its own seed
(:mod:`harness.vary`; the seeds follow one another from ``--seed``), writes its
artifacts into ``iter-NNNN/`` of the one run directory, and one line into
``iterations.jsonl``; the console's reports during it (the guest OS's report
patterns) become ``kernel_report`` findings of that iteration.  The run's verdict is
its worst iteration's: a failing iteration never hides behind later passing ones.
The summary gives failures / iterations with a 95 % interval, the first failing
iteration and the time per iteration (:mod:`harness.rates`); each failing iteration
leaves ``reproducer.yaml``, a standalone scenario with its seed and drawn values.

With ``--keep-on-failure`` the first failing iteration stops at the step that failed
(its injections left in place) and :mod:`harness.keep` keeps the L1 stopped for a
debugger, with an ELF core of its memory for ``slatcheck replay``.

:class:`Engine` (boots and iterations in one run directory) is also what
:mod:`harness.shrink` runs its candidates in.  Nothing here names an operating
system, a hypervisor or an emulator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.artifacts import make_run_dir, write_json
from harness.check import kernel_facts, restore_injections
from harness.context import Progress, RunContext, Services, StepTimeout, default_services
from harness.deadline import deadline, signals_deferred
from harness.errors import InfraError, exit_status_of, verdict_of
from harness.findings import Finding
from harness.holding import guest_shell_wait, read_report
from harness.keep import Failure, keep
from harness.oracles import TableHistory, report_findings
from harness.provenance import flatten, host_provenance
from harness.rates import Rate
from harness.result import ScenarioResult
from harness.runner import record_ending, run_steps, write_artifacts
from harness.scenario.spec import BootStep, CheckStep, InjectStep, ReleaseStep, Scenario
from harness.scenario.yamlsource import read_yaml
from harness.steps import HANDLERS, prepare_image
from harness.vary import Drawn, apply, draw, dump_scenario, new_seed, reproducer, seeds

__all__ = ["RepeatPlan", "Iteration", "Engine", "run_repeated", "write_reproducer"]

DIRTY = ("panic", "timeout", "error", "interrupted")   # the boot cannot be trusted after


@dataclass(frozen=True)
class RepeatPlan:
    """How many iterations, and what to do with a failure."""

    count: int | None = None           # --repeat N
    until_fail: bool = False           # stop at the first failing iteration
    duration: float | None = None      # seconds: start no iteration after this
    reboot_every: int | None = None    # boot anew every K iterations
    seed: int | None = None            # the first iteration's seed (default: random)
    keep_on_failure: bool = False      # keep the L1 stopped at the first failure
    keep_for: float | None = None      # seconds to keep it (None: until Ctrl-C)

    @property
    def repeats(self) -> bool:
        """Whether this is a repeated run at all."""
        return self.count is not None or self.until_fail or self.duration is not None

    def go_on(self, done: int, failed: int, elapsed: float) -> bool:
        """Whether to start another iteration."""
        if (self.until_fail or self.keep_on_failure) and failed:
            return False
        if self.count is not None and done >= self.count:
            return False
        return self.duration is None or elapsed < self.duration


@dataclass
class Iteration:
    """One iteration: its seed and drawn values, verdict, findings and where they are."""

    index: int
    seed: int
    boot: int
    drawn: Drawn
    result: ScenarioResult
    console: tuple[int, int] = (0, 0)  # byte offsets of its part of the boot's console.log
    reproducer: Path | None = None
    ctx: RunContext | None = None      # its context, while it may be kept

    @property
    def failed(self) -> bool:
        """It did not come out as the scenario expects (a skip is not a failure, nor an
        iteration cut short by Ctrl-C or SIGTERM: that says nothing of the kernel)."""
        return self.result.verdict not in ("skip", "interrupted") \
            and not self.result.as_expected

    @property
    def completed(self) -> bool:
        """It ran to its end (it counts in the rate)."""
        return self.result.verdict != "interrupted"

    def to_json(self) -> dict[str, Any]:
        """One line of ``iterations.jsonl``."""
        r = self.result
        return {"iteration": self.index, "seed": self.seed, "boot": self.boot,
                "verdict": r.verdict, "failed": self.failed, "duration": round(r.duration, 3),
                "failed_step": r.failed_step, "message": r.message.splitlines()[:3],
                "findings": [f.summary() for f in r.findings[:5]],
                "dir": str(r.artifacts), "console": list(self.console),
                "reproducer": str(self.reproducer) if self.reproducer else None,
                "drawn": self.drawn.to_json()}


# ---- one boot -------------------------------------------------------------------------

def _needs_target(sc: Scenario) -> bool:
    return any(isinstance(s, CheckStep | InjectStep) for s in sc.steps)


@dataclass
class _Boot:
    """One boot of the L1 and the context its iterations start from."""

    number: int
    ctx: RunContext
    dirty: bool = False                # an iteration left it in a state not to reuse
    iterations: int = 0


def _boot(sc: Scenario, boot_dir: Path, number: int, services: Services,
          progress: Progress, warm: bool = True) -> _Boot:
    """Build or reuse the image, start the machine, wait for the shell, attach."""
    ctx = RunContext(scenario=sc, run_dir=boot_dir, stack=ExitStack(),
                     guest=services.guests[sc.guest.os],
                     hypervisor=services.hypervisors[sc.hypervisor],
                     model=services.models[sc.model], services=services, progress=progress,
                     deadline=time.monotonic() + sc.timeouts.boot, tables=TableHistory(),
                     warm_starts=warm)
    boot = sc.steps[0]
    assert isinstance(boot, BootStep)
    try:
        prepare_image(ctx)
        t = time.monotonic()
        late = StepTimeout(f"{boot.label} ran past its timeout ({sc.timeouts.boot:g} s)")
        with deadline(boot.timeout or sc.timeouts.boot, lambda: late):
            HANDLERS[BootStep](ctx, boot)
            if _needs_target(sc):          # once per boot: kallsyms, types, the debugger
                kernel_facts(ctx)
                ctx.ram()
        ctx.add_phase("boot", time.monotonic() - t)
    except BaseException:
        ctx.stack.close()
        raise
    progress(f"boot {number}: {time.monotonic() - t:.1f} s")
    return _Boot(number, ctx)


def _close(boot: _Boot | None, notes: list[str]) -> None:
    """Shut a boot down; a failure to close is noted, never raised."""
    if boot is None:
        return
    with signals_deferred():
        try:
            boot.ctx.stack.close()
        except Exception as e:      # noqa: BLE001 - the evidence is kept either way
            notes.append(f"clean-up of boot {boot.number}: {type(e).__name__}: {e}")


# ---- one iteration ---------------------------------------------------------------------

def _console_size(boot: _Boot) -> int:
    try:
        return (boot.ctx.run_dir / "console.log").stat().st_size
    except OSError:
        return 0


def _console_text(boot: _Boot, start: int, end: int) -> str:
    with (boot.ctx.run_dir / "console.log").open("rb") as f:
        f.seek(start)
        return f.read(max(0, end - start)).decode(errors="replace")


def _drain(ctx: RunContext) -> None:
    """Put injections back and release every workload still holding (as ``release``
    steps would) until it ends, so the next iteration starts with no VM; raises if the
    guest does not cooperate."""
    restore_injections(ctx)
    for run in ctx.workloads.values():
        while run.holding:
            HANDLERS[ReleaseStep](ctx, ReleaseStep(index=0, line=0, name="drain",
                                                   workload=run.id))
        if not run.exited and run.spec.driver == "slat-workload":
            guest_shell_wait(ctx.console(),
                             f"grep -q '\"event\":\"exit_status\"' {run.out}", 60)
            read_report(ctx, run)


def _kernel_reports(boot: _Boot, it: Iteration, ctx: RunContext) -> None:
    """The console's reports during the iteration as findings of it."""
    c = ctx.guest.console
    text = _console_text(boot, *it.console)
    panics = " ".join(f.detail for f in ctx.findings if f.kind == "panic")
    found = [f for f in report_findings(text, c.panic + c.warning + c.reports,
                                        f"iteration {it.index} (seed {it.seed})")
             if str(f.observed) not in panics]
    ctx.findings.extend(found)
    if found and it.result.verdict == "pass":
        it.result.verdict = "fail"
        it.result.message = f"{len(found)} kernel report(s) on the console"


@dataclass
class Engine:
    """Boots and iterations of one scenario in one run directory."""

    sc: Scenario
    run_dir: Path
    services: Services
    progress: Progress
    plan: RepeatPlan = field(default_factory=RepeatPlan)
    warm: bool = True                  # boots may start from a saved state
    boot: _Boot | None = None
    boots: int = 0
    notes: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)

    def _ensure_boot(self, index: int) -> _Boot:
        every = self.plan.reboot_every
        if self.boot is not None and (self.boot.dirty or
                                      (every and self.boot.iterations >= every)):
            _close(self.boot, self.notes)
            self.boot = None
        if self.boot is None:
            self.boots += 1
            where = self.run_dir if self.boots == 1 else self.run_dir / f"boot-{self.boots:02d}"
            where.mkdir(exist_ok=True)
            self.boot = _boot(self.sc, where, self.boots, self.services, self.progress,
                              self.warm)
            self.properties.update(self.boot.ctx.properties)
        return self.boot

    def iterate(self, index: int, seed: int, sc: Scenario | None = None) -> Iteration:
        """Run iteration *index* with *seed* (of *sc*, default the engine's scenario)."""
        base = sc or self.sc
        boot = self._ensure_boot(index)
        drawn = draw(base, seed)
        concrete = apply(base, drawn)
        it_dir = self.run_dir / f"iter-{index:04d}"
        it_dir.mkdir()
        res = ScenarioResult(name=f"{base.name}#{index}", path=base.path,
                             hypervisor=base.hypervisor, expect=base.expect,
                             provenance={})
        ctx = replace(boot.ctx, scenario=concrete, run_dir=it_dir, workloads={}, injected=[],
                      checks=[], findings=[], phases={}, properties={"seed": str(seed)},
                      finding_step="", seed=seed, keep_failure=self.plan.keep_on_failure,
                      deadline=time.monotonic() + base.timeouts.scenario,
                      progress=lambda line: self.progress(f"#{index} {line}"))
        it = Iteration(index, seed, boot.number, drawn, res, (_console_size(boot), 0), ctx=ctx)
        self._run(boot, ctx, it)
        return it

    def _run(self, boot: _Boot, ctx: RunContext, it: Iteration) -> None:
        t0 = time.monotonic()
        try:
            run_steps(ctx, it.result, ctx.scenario.steps[1:],
                      stop_at_finding=self.plan.keep_on_failure)
        except BaseException as e:       # every ending is this iteration's verdict
            record_ending(it.result, ctx, e)
        finally:
            boot.iterations += 1
            boot.ctx.carry_over(ctx)
            self._after(boot, ctx, it)
            it.result.duration = time.monotonic() - t0
            write_artifacts(ctx, it.result)

    def _after(self, boot: _Boot, ctx: RunContext, it: Iteration) -> None:
        """Clean the guest for the next iteration (unless keeping), judge the console."""
        keep = self.plan.keep_on_failure and it.result.verdict in ("fail", "panic")
        if it.result.verdict in DIRTY:
            boot.dirty = True
        elif not keep:
            try:
                _drain(ctx)
            except Exception as e:      # noqa: BLE001 - the next iteration boots anew
                boot.dirty = True
                self.notes.append(f"iteration {it.index}: cleaning up: {e}")
        it.console = (it.console[0], _console_size(boot))
        _kernel_reports(boot, it, ctx)
        if it.result.verdict == "interrupted":
            it.result.stop = True

    def close(self) -> None:
        """Shut the current boot down."""
        _close(self.boot, self.notes)
        self.boot = None


# ---- the reproducer ---------------------------------------------------------------------

def write_reproducer(sc: Scenario, it: Iteration, path: Path) -> Path:
    """The failing iteration as a standalone scenario: seed and drawn values fixed."""
    doc, _ = read_yaml(sc.path)
    note = (f"reproducer of {sc.name} iteration {it.index} (seed {it.seed}): "
            f"{it.result.verdict}, {len(it.result.findings)} finding(s)")
    out = reproducer(doc, it.drawn, note)
    out["name"] = f"{sc.name}-repro"[:64]
    path.write_text(f"# {note}\n" + dump_scenario(out))
    return path


# ---- the repeated run -------------------------------------------------------------------

def _tagged(it: Iteration) -> list[Finding]:
    """The iteration's findings, each saying which iteration and seed it came from."""
    where = f"iteration {it.index} (seed {it.seed})"
    return [replace(f, detail=f"{where}: {f.detail}" if f.detail else where)
            for f in it.result.findings]


def _verdict(res: ScenarioResult, its: list[Iteration]) -> None:
    """The worst failing iteration's verdict; when none failed, the iterations' own (a
    negative scenario's iterations all fail as expected: so does the run)."""
    failing = [it for it in its if it.failed]
    if not failing:
        if its and res.verdict == "pass":
            res.verdict = its[0].result.verdict
            res.findings = _tagged(its[0])
        return
    worst = max(failing, key=lambda it: exit_status_of(it.result.verdict))
    first = failing[0]
    res.verdict = worst.result.verdict
    res.failed_step = f"iteration {first.index}: {first.result.failed_step}"
    res.message = "\n".join(filter(None, [f"iteration {first.index} (seed {first.seed}): "
                                          f"{first.result.message}", res.message]))
    res.findings = [f for it in failing for f in _tagged(it)]


def _rate(its: list[Iteration]) -> Rate:
    """Failures over the iterations that ran to their end (an interrupted one is left out)."""
    done = [it for it in its if it.completed]
    first = next((it.index for it in done if it.failed), None)
    return Rate.of(sum(it.failed for it in done), len(done), first,
                   sum(it.result.duration for it in its))


def _repeat_json(plan: RepeatPlan, its: list[Iteration], engine: Engine,
                 first_seed: int, wall: float) -> dict[str, Any]:
    rate = _rate(its)
    failing = [it for it in its if it.failed]
    return {"rate": rate.to_json(), "text": rate.text(), "first_seed": first_seed,
            "boots": engine.boots, "wall_seconds": round(wall, 3),
            "iterations_per_minute": round(60 * len(its) / wall, 2) if wall > 0 else 0.0,
            "plan": {k: v for k, v in vars(plan).items() if v not in (None, False)},
            "failures": [{"iteration": it.index, "seed": it.seed, "verdict": it.result.verdict,
                          "dir": str(it.result.artifacts),
                          "reproducer": str(it.reproducer) if it.reproducer else None}
                         for it in failing[:50]]}


Keeper = Callable[[Failure], None]


def run_repeated(sc: Scenario, artifacts_root: Path, plan: RepeatPlan,
                 progress: Progress = print, services: Services | None = None,
                 keeper: Keeper | None = None, warm: bool = True) -> ScenarioResult:
    """Run *sc* repeatedly inside one boot (see the module); never raises for the run's
    own failures.  *keeper* keeps the first failure (default :func:`harness.keep.keep`)."""
    t0 = time.monotonic()
    res = ScenarioResult(name=sc.name, path=sc.path, hypervisor=sc.hypervisor,
                         expect=sc.expect,
                         provenance=host_provenance())
    try:
        run_dir = make_run_dir(artifacts_root, sc.name)
    except InfraError as e:
        res.verdict, res.message = "error", str(e)
        return res
    first_seed = plan.seed if plan.seed is not None else sc.seed if sc.seed is not None \
        else new_seed()
    engine = Engine(sc, run_dir, services or default_services(),
                    lambda line: progress(f"[{sc.name}] {line}"), plan, warm)
    its: list[Iteration] = []
    try:
        _loop(engine, its, first_seed, t0, keeper)
        res.verdict = "pass"
    except BaseException as e:      # a boot that failed, Ctrl-C between iterations
        res.verdict = verdict_of(e)
        res.message = f"{type(e).__name__}: {e}"
        res.stop = isinstance(e, KeyboardInterrupt)
    finally:
        engine.close()
        _finish(res, engine, its, plan, first_seed, time.monotonic() - t0)
    return res


def _loop(engine: Engine, its: list[Iteration], first_seed: int, t0: float,
          keeper: Keeper | None) -> None:
    plan = engine.plan
    for index, seed in enumerate(seeds(first_seed), 1):
        if not plan.go_on(len(its), sum(i.failed for i in its), time.monotonic() - t0):
            return
        it = engine.iterate(index, seed)
        its.append(it)
        engine.progress(f"iteration {index} (seed {seed}): {it.result.verdict} in "
                        f"{it.result.duration:.1f} s")
        if it.failed:
            it.reproducer = write_reproducer(engine.sc, it, engine.run_dir / f"iter-{index:04d}"
                                             / "reproducer.yaml")
        _append(engine.run_dir / "iterations.jsonl", it.to_json())
        if it.result.stop:
            raise KeyboardInterrupt(it.result.message.removeprefix("KeyboardInterrupt: ")
                                    or "interrupted during an iteration")
        if it.failed and plan.keep_on_failure:
            (keeper or keep)(_failure(engine, it))
        it.ctx = None


def _failure(engine: Engine, it: Iteration) -> Failure:
    """What keeping iteration *it*'s failure needs."""
    assert engine.boot is not None and it.ctx is not None and it.result.artifacts is not None
    return Failure(machine=engine.boot.ctx.require_machine(), ctx=it.ctx, iteration=it.index,
                   seed=it.seed, it_dir=it.result.artifacts,
                   scenario=it.reproducer or engine.sc.path, run_dir=engine.run_dir,
                   keep_for=engine.plan.keep_for)


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _finish(res: ScenarioResult, engine: Engine, its: list[Iteration], plan: RepeatPlan,
            first_seed: int, wall: float) -> None:
    """The run's verdict, rate and artifacts (``repeat.json``, ``result.json``)."""
    _verdict(res, its)
    failing = [it for it in its if it.failed]
    if failing and failing[0].reproducer is not None:
        (engine.run_dir / "reproducer.yaml").write_bytes(failing[0].reproducer.read_bytes())
    res.duration = wall
    res.artifacts = engine.run_dir
    res.repeat = _repeat_json(plan, its, engine, first_seed, wall)
    res.properties.update(engine.properties)
    res.properties.update(flatten(res.provenance, "provenance."))
    res.properties["repeat.rate"] = res.repeat["text"]
    if engine.notes:
        res.message = "\n".join(filter(None, [res.message, *engine.notes]))
    for name, data in (("repeat.json", res.repeat), ("result.json", res.to_json())):
        try:
            write_json(engine.run_dir / name, data)
        except OSError as e:
            res.message += f"\ncannot write {name}: {e.strerror or e}"
            res.verdict = "error"
