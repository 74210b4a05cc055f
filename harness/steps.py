"""Step handlers, one per step type: boot, shell, wait, workload, release, check, inject.

:data:`HANDLERS` maps each step class of :mod:`harness.scenario.spec` to its
handler ``(RunContext, step) -> None``.  A handler raises to end the run; the
runner turns the exception into the verdict it carries.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, TypeVar

from harness.artifacts import write_json
from harness.check import run_check, run_inject
from harness.console import Console
from harness.context import RunContext, WorkloadRun
from harness.errors import InfraError, StepFailed
from harness.machines import MachineConfig
from harness.scenario.spec import (
    BootStep,
    CheckStep,
    InjectStep,
    ReleaseStep,
    ShellStep,
    StepSpec,
    WaitStep,
    WorkloadStep,
)
from harness.warmstart import warm_boot, warm_state
from harness.workload import parse_report, workload_argv

__all__ = ["HANDLERS", "guest_shell_wait"]

S = TypeVar("S", bound=StepSpec)
Handler = Callable[[RunContext, Any], None]
HANDLERS: dict[type[StepSpec], Handler] = {}


def handles(kind: type[S]) -> Callable[[Callable[[RunContext, S], None]],
                                        Callable[[RunContext, S], None]]:
    """Register the decorated function as the handler of step type *kind*."""
    def deco(fn: Callable[[RunContext, S], None]) -> Callable[[RunContext, S], None]:
        HANDLERS[kind] = fn
        return fn
    return deco


# ---- boot ------------------------------------------------------------------------------

@handles(BootStep)
def step_boot(ctx: RunContext, step: BootStep) -> None:
    """Build (or reuse) the image, start the machine (restored from a warm start when
    :mod:`harness.warmstart` has one), wait for the shell."""
    sc = ctx.scenario
    t = time.monotonic()
    image = ctx.image = ctx.services.build_image(sc.guest.image, _build_log(ctx))
    ctx.add_phase("image", time.monotonic() - t)
    _record_image(ctx)
    arch = ctx.hypervisor.arch_record
    m = sc.machine
    config = MachineConfig(
        arch=arch, boot=image.boot_spec(sc.guest.append), artifacts=ctx.run_dir,
        cpu=m.cpu or arch.cpu, memory=m.memory, smp=m.smp, accel=m.accel, name=sc.name,
        fault_log=ctx.hypervisor.fault_log if m.vmrun_log is None else m.vmrun_log)
    boot_timeout = step.timeout or sc.timeouts.boot
    warm = warm_state(image, config, m.emulator)
    if warm is None:
        _start(ctx, config, boot_timeout, ctx.stack)
    else:
        warm_boot(ctx, config, warm, boot_timeout, _start)
    console = ctx.console()
    ctx.properties["guest.uname"] = console.run("uname -r", timeout=30).output.strip()


def _start(ctx: RunContext, config: MachineConfig, boot_timeout: float,
           stack: ExitStack) -> None:
    """Start the machine and its console in *stack*; a cold boot waits for the shell."""
    machine = ctx.machine = stack.enter_context(
        ctx.services.machines[ctx.scenario.machine.emulator](config))
    for key, value in machine.describe().items():
        ctx.properties[f"machine.{key}"] = value
    console = stack.enter_context(Console.connect(
        machine.console, log_path=ctx.run_dir / "console.log", profile=ctx.guest.console))
    ctx.attach_console(console)
    ctx.properties["machine.start"] = "cold" if config.incoming is None else "warm"
    if config.incoming is not None:
        return
    # probes typed before /init opens the console can wedge the arm64 PL011's input (seen:
    # no echo ever after); wait for init's line first, then probe for the shell
    image = ctx.require_image()
    if image.ready:
        console.expect(re.escape(image.ready), timeout=boot_timeout)
    console.wait_for_shell(timeout=boot_timeout)


def _build_log(ctx: RunContext) -> Callable[[str], None]:
    """Image build progress: into ``image-build.log`` and the run's progress."""
    log = ctx.run_dir / "image-build.log"

    def emit(line: str) -> None:
        with log.open("a") as f:
            f.write(line.rstrip() + "\n")
        ctx.progress(line)
    return emit


def _record_image(ctx: RunContext) -> None:
    """Image provenance into the JUnit properties and the artifacts."""
    image = ctx.require_image()
    man = image.manifest
    write_json(ctx.run_dir / "image-manifest.json", man)
    ctx.properties["image.name"] = image.name
    ctx.properties["image.kernel_release"] = image.kernel_release
    for key, val in sorted(man.get("files", {}).items()):
        ctx.properties[f"image.sha256.{key}"] = str(val)
    for pkg in man.get("packages", []):
        ctx.properties[f"package.{pkg['name']}"] = f"{pkg['version']} sha256:{pkg['sha256']}"


# ---- shell and wait ----------------------------------------------------------------------

@handles(ShellStep)
def step_shell(ctx: RunContext, step: ShellStep) -> None:
    """Run a guest shell command; check its status and, optionally, its output."""
    res = ctx.console().run(step.cmd, timeout=ctx.step_timeout(step), check=False)
    if res.status != step.status:
        raise StepFailed(f"{step.label}: `{step.cmd}` exited {res.status}, expected "
                         f"{step.status}; output tail:\n{res.output[-1500:]}")
    if step.expect is not None and not re.search(step.expect, res.output, re.M):
        raise StepFailed(f"{step.label}: output of `{step.cmd}` does not match "
                         f"/{step.expect}/; output tail:\n{res.output[-1500:]}")


@handles(WaitStep)
def step_wait(ctx: RunContext, step: WaitStep) -> None:
    """Wait for a pattern on the console (panics end the wait at once)."""
    ctx.console().expect(step.pattern, timeout=ctx.step_timeout(step))


def guest_shell_wait(console: Console, cond: str, timeout: float) -> None:
    """Poll a guest shell condition until it holds, in one guest command."""
    loops = max(1, int(timeout / 0.2))
    cmd = (f"i=0; while ! {{ {cond}; }}; do i=$((i+1)); [ $i -ge {loops} ] && exit_=1 && break; "
           f"sleep 0.2; done; [ -z \"$exit_\" ]")
    res = console.run(cmd, timeout=timeout + 30, check=False)
    console.run("unset exit_ i", timeout=30, check=False)
    if res.status != 0:
        raise InfraError(f"guest condition not met within {timeout:.0f} s: {cond}")


# ---- the workload ------------------------------------------------------------------------

EXIT_EVENT = '"event":"exit_status"'


def _exited(run: WorkloadRun) -> str:
    return f"grep -q '{EXIT_EVENT}' {shlex.quote(run.out)}"


def _held(run: WorkloadRun, holds: int) -> str:
    """Guest condition: the workload printed its *holds*-th hold event."""
    return f"[ $(grep -c '\"event\":\"hold\"' {shlex.quote(run.out)}) -ge {holds} ]"


@handles(WorkloadStep)
def step_workload(ctx: RunContext, step: WorkloadStep) -> None:
    """Start the KVM workload in the background; wait until it holds (or ends)."""
    console = ctx.console()
    run = WorkloadRun(spec=step, out=f"/tmp/slat-{step.id}.out",
                      fifo=f"/tmp/slat-{step.id}.fifo", holds_left=step.holds)
    out, fifo = shlex.quote(run.out), shlex.quote(run.fifo)
    argv = shlex.join(workload_argv(step))
    console.run(f"rm -f {fifo} {out}; mkfifo {fifo}", timeout=30)
    console.run(f"( {argv} 0<>{fifo}; echo \"@@SLAT {{\\\"event\\\":\\\"exit_status\\\","
                f"\\\"status\\\":$?}}\" ) >{out} 2>&1 &", timeout=30)
    run.pid = int(console.run("echo $!", timeout=30).output.strip().splitlines()[-1])
    ctx.workloads[step.id] = run
    cond = _exited(run) if not step.holds else f"{_held(run, 1)} || {_exited(run)}"
    guest_shell_wait(console, cond, ctx.step_timeout(step))
    _read_report(ctx, run)
    if run.status not in (None, 0):
        raise InfraError(f"{step.label}: workload exited {run.status}:\n{_tail(ctx, run)}")
    if step.holds and run.exited:
        raise InfraError(f"{step.label}: workload {step.id} exited instead of holding:\n"
                         f"{_tail(ctx, run)}")


def _read_report(ctx: RunContext, run: WorkloadRun) -> None:
    text = ctx.console().run(f"cat {shlex.quote(run.out)}", timeout=60).output
    (ctx.run_dir / f"workload-{run.id}.out").write_text(text)
    run.report = parse_report(text.splitlines())
    m = re.findall(r'"event":\s*"exit_status",\s*"status":\s*(\d+)', text)
    run.status = int(m[-1]) if m else None


def _tail(ctx: RunContext, run: WorkloadRun) -> str:
    return "\n".join((ctx.run_dir / f"workload-{run.id}.out").read_text().splitlines()[-15:])


@handles(ReleaseStep)
def step_release(ctx: RunContext, step: ReleaseStep) -> None:
    """Let held workloads go on: to their next cycle's hold, or to their end."""
    console = ctx.console()
    runs = [ctx.workloads[step.workload]] if step.workload else \
        [r for r in ctx.workloads.values() if r.holding]
    for run in runs:
        if not run.holding:
            raise InfraError(f"{step.label}: workload {run.id} is not holding "
                             f"(exit status {run.status}):\n{_tail(ctx, run)}")
        # opened read-write: never blocks, even if the workload is gone
        console.run(f"echo go 1<>{shlex.quote(run.fifo)}", timeout=30)
        run.holds_left -= 1
    for run in runs:
        released = run.spec.holds - run.holds_left
        cond = _exited(run) if not run.holds_left else \
            f"{_held(run, released + 1)} || {_exited(run)}"
        guest_shell_wait(console, cond, ctx.step_timeout(step))
        _read_report(ctx, run)
        if run.status not in (None, 0) or (run.holds_left == 0 and not run.exited):
            raise InfraError(f"{step.label}: workload {run.id} exited {run.status}:\n"
                             f"{_tail(ctx, run)}")


# ---- check and inject ----------------------------------------------------------------------

@handles(CheckStep)
def step_check(ctx: RunContext, step: CheckStep) -> None:
    """Extract the nested tables, compare with the model, record findings."""
    run_check(ctx, step)


@handles(InjectStep)
def step_inject(ctx: RunContext, step: InjectStep) -> None:
    """Corrupt one nested leaf through the debug target (restored after the next check)."""
    run_inject(ctx, step)
