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
from dataclasses import replace
from typing import Any, TypeVar

from harness import freebsd_bhyvectl as bhyvectl
from harness import openbsd_vmd as vmd
from harness.arch import x86_la57
from harness.artifacts import write_json
from harness.check import run_check, run_inject
from harness.console import Console
from harness.context import RunContext, WorkloadRun
from harness.errors import InfraError, SlatcheckError, StepFailed
from harness.holding import (
    exited_cond,
    guest_shell_wait,
    held_cond,
    read_report,
    release_command,
    report_tail,
    wait_released,
)
from harness.images import Image
from harness.machines import MachineConfig
from harness.machines.base import Machine, MachineFactory
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
from harness.warm import WarmState, budget_from_env, prune
from harness.workload import parse_report, workload_argv

__all__ = ["HANDLERS", "prepare_image"]

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
    """Build (or reuse) the image; start the machine from a saved state of it when there
    is one (a warm start), else boot it and save its state for the next runs."""
    sc = ctx.scenario
    image = prepare_image(ctx)
    arch = ctx.hypervisor.arch_record
    m = sc.machine
    five_level = arch.name == "x86_64" and x86_la57(m.cpu or arch.cpu)
    config = MachineConfig(
        arch=arch, boot=image.boot_spec(sc.guest.append, five_level), artifacts=ctx.run_dir,
        cpu=m.cpu or arch.cpu, memory=m.memory, smp=m.smp, accel=m.accel, name=sc.name,
        fault_log=ctx.hypervisor.fault_log if m.vmrun_log is None else m.vmrun_log)
    factory = ctx.services.machines[m.emulator]
    boot_timeout = step.timeout or sc.timeouts.boot
    (ctx.run_dir / "console.log").touch()   # there from the start, even if stopped early
    cold = factory(config)            # not launched yet: it says what a state depends on
    warm = _warm_state(ctx, cold)
    if warm is not None and (damage := warm.damage()) is not None:
        _fall_back(ctx, warm, f"the saved state {warm.dir.name} is damaged: {damage}",
                   if_damaged=True)
    if warm is None or not warm.ready() or not _start_warm(ctx, factory, config, warm,
                                                           boot_timeout):
        why = ctx.properties.get("machine.start") or (
            "cold (the saved machine was not usable)" if "machine.warm_fallback" in
            ctx.properties else "cold (no saved machine yet)")
        ctx.progress(f"booting {image.name} {why}")
        _start_cold(ctx, cold, boot_timeout)
        if warm is not None:
            _save_warm(ctx, warm)
    for key, value in ctx.require_machine().describe().items():
        ctx.properties[f"machine.{key}"] = value
    console = ctx.console()
    ctx.properties["guest.uname"] = console.run("uname -r", timeout=30).output.strip()
    for key, value in ctx.hypervisor.prepare(console).items():
        ctx.properties[f"hypervisor.{key}"] = value


def _warm_state(ctx: RunContext, machine: Machine) -> WarmState | None:
    """The saved-state slot of this image on this machine, or None (``--cold``, a
    backend that cannot save, a guest without a boot id)."""
    if not ctx.warm_starts:
        ctx.properties["machine.start"] = "cold (--cold)"
        return None
    key = machine.state_key()
    if key is None or ctx.guest.boot_id is None:
        ctx.properties["machine.start"] = "cold (no warm starts for this machine or guest)"
        return None
    return WarmState.for_key(ctx.require_image(), key, ctx.scenario.guest.append,
                             cache_dir=ctx.services.states)


def _connect(ctx: RunContext, machine: Machine) -> Console:
    return Console.connect(machine.console, log_path=ctx.run_dir / "console.log",
                           profile=ctx.guest.console)


def _start_cold(ctx: RunContext, machine: Machine, boot_timeout: float) -> None:
    """Launch and boot; wait for the shell."""
    machine = ctx.machine = ctx.stack.enter_context(machine)
    console = ctx.stack.enter_context(_connect(ctx, machine))
    ctx.attach_console(console)
    image = ctx.require_image()
    # probes typed before /init opens the console can wedge the arm64 PL011's input (seen:
    # no echo ever after); wait for init's line first, then probe for the shell
    image = ctx.require_image()
    if image.ready:
        console.expect(re.escape(image.ready), timeout=boot_timeout)
    if ctx.guest.login is not None:         # a getty (the BSDs): log in first
        ctx.guest.login(console, image, boot_timeout)
    else:
        console.wait_for_shell(timeout=boot_timeout)
    ctx.properties.setdefault("machine.start", "cold")


WARM_SETTLE = 1.0    # seconds a restored guest runs before it must answer again
KEEPS_RUNNING = "keeps-running"   # kept with a state once a restore of it went on running


def _goes_on_running(ctx: RunContext, console: Console, boot_id: str) -> None:
    """A restored guest must go on running, not answer once (an arm64 state was seen to
    answer, then freeze, on every restore); checked on a state's first restore only."""
    assert ctx.guest.boot_id is not None
    time.sleep(WARM_SETTLE)
    if ctx.guest.boot_id(console) != boot_id:
        raise InfraError("the restored guest's boot id changed a second later")


def _start_warm(ctx: RunContext, factory: MachineFactory, config: MachineConfig,
                warm: WarmState, boot_timeout: float) -> bool:
    """Start from the saved state; on any failure undo it, note why, drop the state."""
    assert ctx.guest.boot_id is not None
    attempt = ExitStack()
    try:
        machine = attempt.enter_context(factory(replace(config, incoming=warm.state)))
        console = attempt.enter_context(_connect(ctx, machine))
        console.wait_for_shell(timeout=min(boot_timeout, 60.0))
        boot_id = ctx.guest.boot_id(console)
        if boot_id != warm.boot_id():
            raise InfraError(f"the restored guest's boot id is {boot_id!r}, the state was "
                             f"saved from boot {warm.boot_id()!r}")
        if not warm.recall(KEEPS_RUNNING, boot_id):
            _goes_on_running(ctx, console, boot_id)
            warm.remember(KEEPS_RUNNING, boot_id, True)
    except SlatcheckError as exc:
        attempt.close()
        _fall_back(ctx, warm, f"warm start from {warm.dir.name} failed: {_why(ctx, exc)}")
        return False
    except BaseException:
        attempt.close()
        raise
    ctx.stack.enter_context(attempt.pop_all())
    ctx.machine, ctx.warm, ctx.boot_id = machine, warm, boot_id
    ctx.attach_console(console)
    ctx.properties["machine.start"] = "warm"
    ctx.properties["machine.state"] = warm.dir.name
    ctx.progress(f"started from the saved machine {warm.dir.name} (a warm start; --cold "
                 "boots instead)")
    warm.touch()
    return True


WARM_STDERR = "warm-start.stderr"    # the failed restore's emulator stderr, kept


def _why(ctx: RunContext, exc: SlatcheckError) -> str:
    """The failure's first line, and the emulator's last stderr line, which the cold
    boot would overwrite: that file is kept as WARM_STDERR."""
    why = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    stderr = ctx.run_dir / "qemu.stderr"
    if stderr.is_file() and stderr.stat().st_size:
        kept = stderr.replace(ctx.run_dir / WARM_STDERR)
        lines = [ln for ln in kept.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            why += f" (emulator: {lines[-1][:300]}; all in {WARM_STDERR})"
    return why


def _fall_back(ctx: RunContext, warm: WarmState, why: str, if_damaged: bool = False) -> None:
    """Say why the saved state is not used, drop it, and let the run boot cold."""
    note = f"{why}; booting cold"
    ctx.progress(note)
    ctx.properties["machine.warm_fallback"] = note
    warm.discard(if_damaged)


def _save_warm(ctx: RunContext, warm: WarmState) -> None:
    """Save the freshly booted machine for later runs (unless another run does)."""
    assert ctx.guest.boot_id is not None
    t = time.monotonic()
    boot_id = ctx.boot_id = ctx.guest.boot_id(ctx.console())
    try:
        saved = warm.save(ctx.require_machine().save_state, boot_id)
    except (SlatcheckError, OSError) as exc:    # a run goes on without a warm state
        ctx.progress(f"saving the booted machine failed: {exc}")
        ctx.properties["machine.save_failed"] = str(exc)[:300]
        return
    took = time.monotonic() - t
    ctx.add_phase("save_state", took)
    if saved:
        ctx.progress(f"saved the booted machine for warm starts: {warm.dir.name} "
                     f"({took:.1f} s)")
        for gone in prune(warm.dir.parent, *budget_from_env(), keep=warm.dir):
            ctx.progress(f"removed the warm state {gone.name} (unused or over the budget)")
    if warm.boot_id() == boot_id:
        ctx.warm = warm               # per-boot facts of this boot may be kept with it


def prepare_image(ctx: RunContext) -> Image:
    """Build (or reuse) the scenario's image once per run and record its provenance."""
    if ctx.image is None:
        t = time.monotonic()
        ctx.image = _build(ctx)
        ctx.add_phase("image", time.monotonic() - t)
        _record_image(ctx)
    return ctx.image


def _build(ctx: RunContext) -> Image:
    """The scenario's image, with the kernel under test if the guest names one."""
    guest = ctx.scenario.guest
    if guest.kernel is None:
        return ctx.services.build_image(guest.image, _build_log(ctx))
    if ctx.services.build_kernel_image is None:
        raise InfraError(f"these services build no image with a kernel given by path "
                         f"({guest.kernel.path})")
    return ctx.services.build_kernel_image(guest.image, guest.kernel, _build_log(ctx))


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
    for key, val in sorted(man.get("kernel", {}).items()):
        ctx.properties[f"kernel.{key}"] = str(val)
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


# ---- the workload ------------------------------------------------------------------------

@handles(WorkloadStep)
def step_workload(ctx: RunContext, step: WorkloadStep) -> None:
    """Start the KVM workload in the background; wait until it holds (or ends)."""
    console = ctx.console()
    run = WorkloadRun(spec=step, out=f"/tmp/slat-{step.id}.out",
                      fifo=f"/tmp/slat-{step.id}.fifo", holds_left=step.holds)
    if step.driver == "vmd":
        _start_vmd(ctx, step, run)
        return
    if step.driver == "bhyvectl":
        _start_bhyvectl(ctx, step, run)
        return
    out, fifo = shlex.quote(run.out), shlex.quote(run.fifo)
    argv = shlex.join(workload_argv(step))
    console.run(f"rm -f {fifo} {out}; mkfifo {fifo}", timeout=30)
    console.run(f"( {argv} 0<>{fifo}; echo \"@@SLAT {{\\\"event\\\":\\\"exit_status\\\","
                f"\\\"status\\\":$?}}\" ) >{out} 2>&1 &", timeout=30)
    run.pid = int(console.run("echo $!", timeout=30).output.strip().splitlines()[-1])
    ctx.workloads[step.id] = run
    cond = exited_cond(run) if not step.holds else f"{held_cond(run, 1)} || {exited_cond(run)}"
    guest_shell_wait(console, cond, ctx.step_timeout(step))
    read_report(ctx, run)
    if run.status not in (None, 0):
        raise InfraError(f"{step.label}: workload exited {run.status}:\n{report_tail(ctx, run)}")
    if step.holds and run.exited:
        raise InfraError(f"{step.label}: workload {step.id} exited instead of holding:\n"
                         f"{report_tail(ctx, run)}")


def _start_vmd(ctx: RunContext, step: WorkloadStep, run: WorkloadRun) -> None:
    """``driver: vmd``: start the tiny VM and report it as the one held VM."""
    console = ctx.console()
    memory = step.slots[0].size
    console.run(vmd.start_command(step.id, memory), timeout=ctx.step_timeout(step))
    ctx.workloads[step.id] = run
    vm_id, pid = vmd.wait_running(
        lambda cmd: console.run(cmd, timeout=60, check=False).output, step.id,
        ctx.step_timeout(step))
    run.pid = pid
    lines = vmd.report_lines(step.id, vm_id, pid, memory)
    if not step.holds:                    # hold: none: stop it at once
        console.run(vmd.stop_command(step.id), timeout=ctx.step_timeout(step))
        lines += vmd.destroyed_lines()
        run.status = 0
    _vmd_report(ctx, run, lines)


def _start_bhyvectl(ctx: RunContext, step: WorkloadStep, run: WorkloadRun) -> None:
    """``driver: bhyvectl``: create the VM with its memory and report it as the held VM."""
    console = ctx.console()
    memory = step.slots[0].size
    console.run(bhyvectl.destroy_command(step.id) + " 2>/dev/null; true", timeout=60)
    console.run(bhyvectl.create_command(step.id, memory), timeout=ctx.step_timeout(step))
    ctx.workloads[step.id] = run
    run.pid = 0
    lines = bhyvectl.report_lines(step.id, memory)
    if not step.holds:                    # hold: none: destroy it at once
        console.run(bhyvectl.destroy_command(step.id), timeout=ctx.step_timeout(step))
        lines += bhyvectl.destroyed_lines()
        run.status = 0
    _vmd_report(ctx, run, lines)


def _release_bhyvectl(ctx: RunContext, step: ReleaseStep, run: WorkloadRun) -> None:
    """``bhyvectl --destroy``; the VM's device node must be gone."""
    console = ctx.console()
    console.run(bhyvectl.destroy_command(run.id), timeout=ctx.step_timeout(step))
    if console.run(bhyvectl.exists_command(run.id), timeout=60, check=False).status == 0:
        raise InfraError(f"{step.label}: /dev/vmm/{bhyvectl.vm_name(run.id)} is still there "
                         "after bhyvectl --destroy")
    text = (ctx.run_dir / f"workload-{run.id}.out").read_text().splitlines()
    run.holds_left -= 1
    run.status = 0
    _vmd_report(ctx, run, [*text, *bhyvectl.destroyed_lines()])


def _vmd_report(ctx: RunContext, run: WorkloadRun, lines: list[str]) -> None:
    (ctx.run_dir / f"workload-{run.id}.out").write_text("\n".join(lines) + "\n")
    run.report = parse_report(lines)


def _release_vmd(ctx: RunContext, step: ReleaseStep, run: WorkloadRun) -> None:
    """``vmctl stop -f -w``; the VM must be gone from ``vmctl status``."""
    console = ctx.console()
    console.run(vmd.stop_command(run.id), timeout=ctx.step_timeout(step))
    left = console.run(vmd.status_command(run.id), timeout=60, check=False).output
    if vmd.parse_status(left, vmd.vm_name(run.id)) is not None:
        raise InfraError(f"{step.label}: vmd still lists {vmd.vm_name(run.id)} after "
                         f"vmctl stop -f -w:\n{left}")
    text = (ctx.run_dir / f"workload-{run.id}.out").read_text().splitlines()
    run.holds_left -= 1
    run.status = 0
    _vmd_report(ctx, run, [*text, *vmd.destroyed_lines()])


@handles(ReleaseStep)
def step_release(ctx: RunContext, step: ReleaseStep) -> None:
    """Let held workloads go on: to their next cycle's hold, or to their end."""
    console = ctx.console()
    runs = [ctx.workloads[step.workload]] if step.workload else \
        [r for r in ctx.workloads.values() if r.holding]
    for run in [r for r in runs if r.spec.driver in ("vmd", "bhyvectl")]:
        if not run.holding:
            raise InfraError(f"{step.label}: {run.spec.driver} VM of workload {run.id} is "
                             "not held")
        (_release_vmd if run.spec.driver == "vmd" else _release_bhyvectl)(ctx, step, run)
    runs = [r for r in runs if r.spec.driver not in ("vmd", "bhyvectl")]
    for run in runs:
        if not run.holding:
            raise InfraError(f"{step.label}: workload {run.id} is not holding "
                             f"(exit status {run.status}):\n{report_tail(ctx, run)}")
        console.run(release_command(run), timeout=30)
        run.holds_left -= 1
    wait_released(ctx, runs, step)


# ---- check and inject ----------------------------------------------------------------------

@handles(CheckStep)
def step_check(ctx: RunContext, step: CheckStep) -> None:
    """Extract the nested tables, compare with the model, record findings (during a
    release: :mod:`harness.midcheck`)."""
    if step.during is not None:
        from harness.midcheck import run_mid_check
        run_mid_check(ctx, step)
    else:
        run_check(ctx, step)


@handles(InjectStep)
def step_inject(ctx: RunContext, step: InjectStep) -> None:
    """Corrupt one nested leaf through the debug target (restored after the next check);
    an injection whose drawn chance did not come up (``probability``) does nothing."""
    if step.probability <= 0.0:
        ctx.progress(f"{step.label}: did not fire this run (probability)")
        return
    run_inject(ctx, step)


