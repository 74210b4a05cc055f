"""Run one scenario: resolve its records, execute the steps, judge, keep the evidence.

Everything a run starts is owned by a context manager (``contextlib.ExitStack``),
so a crash, a timeout or Ctrl-C leaves no emulator or debugger behind, and the
artifacts (console log, extracted state, findings, result) are written in
``finally``.  The verdict comes from the exception that ended the run
(:func:`harness.errors.verdict_of`); an exception the harness did not expect is
verdict ``error`` with its traceback in ``traceback.txt``.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from harness.artifacts import make_run_dir, write_json
from harness.check import slat_json
from harness.context import Progress, RunContext, Services, StepTimeout, default_services
from harness.deadline import deadline, signals_deferred
from harness.errors import InfraError, exit_status_of, verdict_of
from harness.findings import Finding
from harness.provenance import flatten, host_provenance
from harness.result import ScenarioResult
from harness.scenario.spec import BootStep, Scenario, Step
from harness.scratch import sweep_stale
from harness.steps import HANDLERS, prepare_image

__all__ = ["run_scenario", "quiet"]


def quiet(line: str) -> None:
    """A progress sink that prints nothing."""


def _context(sc: Scenario, run_dir: Path, stack: ExitStack, t0: float,
             progress: Progress, services: Services, warm: bool) -> RunContext:
    """The run context with the scenario's guest, hypervisor and model records."""
    ctx = RunContext(scenario=sc, run_dir=run_dir, stack=stack,
                     guest=services.guests[sc.guest.os],
                     hypervisor=services.hypervisors[sc.hypervisor],
                     model=services.models[sc.model], deadline=t0 + sc.timeouts.scenario,
                     services=services, progress=progress, seed=sc.seed or 0,
                     warm_starts=warm)
    if sc.seed is not None:
        ctx.properties["seed"] = str(sc.seed)
    return ctx


def _drawn(sc: Scenario) -> Scenario:
    """The run's concrete scenario: its values drawn from its seed (a new one if it names
    none; harness.vary), recorded as the property ``seed``."""
    from harness.vary import apply, draw, new_seed
    return apply(sc, draw(sc, sc.seed if sc.seed is not None else new_seed()))


def _step_limit(ctx: RunContext, step: Step) -> float:
    """The step's own time limit (boot: ``timeouts.boot``), within the scenario's."""
    t = ctx.scenario.timeouts
    own = step.timeout or (t.boot if isinstance(step, BootStep) else t.step)
    left = ctx.deadline - time.monotonic()
    if left <= 0:
        raise StepTimeout(f"scenario timeout ({t.scenario:g} s) reached before {step.label}")
    return min(own, left)


def _run_steps(ctx: RunContext, res: ScenarioResult, steps: Sequence[Step] | None = None,
               stop_at_finding: bool = False) -> None:
    """Every step (of *steps*, default all) in order under its deadline, one progress line
    each; then the verdict.  *stop_at_finding*: no step after the first with findings."""
    for step in ctx.scenario.steps if steps is None else steps:
        res.failed_step = step.label
        if isinstance(step, BootStep):
            prepare_image(ctx)          # before the boot clock: a first build takes minutes
        if step.delay:
            time.sleep(step.delay)      # L1 runs on meanwhile (vary.delay)
        ts = time.monotonic()
        limit = _step_limit(ctx, step)
        late = StepTimeout(f"{step.label} ran past its timeout ({limit:g} s)")
        with deadline(limit, lambda late=late: late):   # type: ignore[misc]
            HANDLERS[type(step)](ctx, step)
        took = time.monotonic() - ts
        ctx.add_phase(step.kind, took)
        ctx.progress(f"{step.label}: {took:.1f} s")
        if stop_at_finding and ctx.findings:
            break
    res.failed_step = ""
    res.verdict = "fail" if ctx.findings else "pass"
    if ctx.findings:
        res.message = f"{len(ctx.findings)} finding(s)"
        res.failed_step = ctx.finding_step


def _ended(res: ScenarioResult, ctx: RunContext, exc: BaseException) -> None:
    """Record how an exception ended the run."""
    res.verdict = verdict_of(exc)
    res.message = (f"interrupted ({exc})" if isinstance(exc, KeyboardInterrupt)
                   else f"{type(exc).__name__}: {exc}")
    if res.verdict == "panic":
        ctx.findings.append(Finding("panic", "-", None, None, None, detail=str(exc)[:2000]))
    if res.verdict == "error" and not _expected_error(exc):
        _write_traceback(ctx, exc)


def _write_traceback(ctx: RunContext, exc: BaseException) -> None:
    """``traceback.txt`` for a failure the harness did not expect (if the disk allows)."""
    try:
        (ctx.run_dir / "traceback.txt").write_text("".join(traceback.format_exception(exc)))
    except OSError:
        pass                            # the result says what happened; the disk is full


def _expected_error(exc: BaseException) -> bool:
    """Errors raised on purpose explain themselves; anything else is a harness bug."""
    from harness.errors import SlatcheckError
    return isinstance(exc, SlatcheckError)


def _finish(ctx: RunContext, res: ScenarioResult) -> None:
    """Write every artifact we have, whatever happened; a write that fails (a full disk)
    makes the run an infrastructure error but does not stop the other writes."""
    res.findings = list(ctx.findings)
    res.phases = dict(ctx.phases)
    res.properties.update(ctx.properties)
    res.properties.update(flatten(res.provenance, "provenance."))
    res.artifacts = ctx.run_dir
    failed: list[str] = []
    for name, data in (("slat.json", lambda: slat_json(ctx)),
                       ("findings.json", res.findings_json),
                       ("result.json", res.to_json)):
        if name == "result.json" and failed:
            _artifacts_failed(res, failed)
        try:
            write_json(ctx.run_dir / name, data())
        except OSError as e:
            failed.append(f"{name}: {e.strerror or e}")
    if failed:
        _artifacts_failed(res, failed)


def _artifacts_failed(res: ScenarioResult, failed: list[str]) -> None:
    """A run whose evidence could not be written is not a pass."""
    note = "cannot write artifacts: " + "; ".join(dict.fromkeys(failed))
    if note not in res.message:
        res.message = f"{res.message}\n{note}".strip()
    if exit_status_of(res.verdict) < exit_status_of("error"):
        res.verdict = "error"


def run_scenario(sc: Scenario, artifacts_root: Path, progress: Progress = quiet,
                 services: Services | None = None, warm: bool = True) -> ScenarioResult:
    """Run *sc*; never raises for the run's own failures.

    With *warm* (the default) the boot step starts from a saved state of the same
    image and machine when there is one (:mod:`harness.warm`), and saves one after a
    cold boot; ``provenance.machine.start`` says which it was.  Ctrl-C ends the run
    with verdict ``interrupted`` after cleanup and artifacts; the caller then stops
    and still writes its reports.
    """
    t0 = time.monotonic()
    sweep_stale()                       # scratch directories of runs that were killed
    sc = _drawn(sc)
    res = ScenarioResult(name=sc.name, path=sc.path, hypervisor=sc.hypervisor,
                         expect=sc.expect,
                         provenance=host_provenance())
    try:
        run_dir = make_run_dir(artifacts_root, sc.name)
    except InfraError as e:
        res.verdict, res.message = "error", str(e)
        return res
    with ExitStack() as stack:
        ctx = _context(sc, run_dir, stack, t0, lambda line: progress(f"[{sc.name}] {line}"),
                       services or default_services(), warm)
        try:
            _run_steps(ctx, res)
        except BaseException as e:   # the outermost layer: every exit is a verdict
            _ended(res, ctx, e)
        finally:
            with signals_deferred() as came:   # a second Ctrl-C waits for clean-up
                _clean_up(stack, res, ctx)
                res.duration = time.monotonic() - t0
                res.provenance["machine"] = {k.removeprefix("machine."): v for k, v in
                                             ctx.properties.items()
                                             if k.startswith("machine.")}
                if ctx.image is not None and "kernel" in ctx.image.manifest:
                    res.provenance["kernel"] = dict(ctx.image.manifest["kernel"])
                _finish(ctx, res)
            res.stop = bool(came) or res.verdict == "interrupted"
    return res


def _clean_up(stack: ExitStack, res: ScenarioResult, ctx: RunContext) -> None:
    """Close the debugger, console and machine (reverse order of start); a failure to
    close is recorded, never raised over the run's own verdict."""
    try:
        stack.close()
    except Exception as e:        # noqa: BLE001 - the outermost layer keeps the evidence
        res.message = f"{res.message}\nclean-up: {type(e).__name__}: {e}".strip()
        if res.verdict == "pass":
            res.verdict = "error"
        _write_traceback(ctx, e)


# what a repeated run (harness.repeat) does per iteration, as the runner does per run
run_steps = _run_steps
record_ending = _ended
write_artifacts = _finish
clean_up = _clean_up
