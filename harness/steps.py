"""Step handlers: boot, shell, workload, wait, check, inject, release.

Each handler takes the run context and the step; registration is by kind in
:data:`harness.runner.STEP_HANDLERS`.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from harness.errors import InfraError, StepFailed
from harness.runner import RunContext, _handler
from harness.scenario import Step, parse_addr

__all__ = ["WorkloadRun", "guest_shell_wait"]


@dataclass
class WorkloadRun:
    """A workload started in the background of the guest shell."""

    id: str
    params: dict[str, Any]
    out: str                       # guest file with its report
    fifo: str                      # guest FIFO it reads "go" from when it holds
    pid: int = 0
    report: Any = None             # harness.workload.WorkloadReport
    released: bool = False
    status: int | None = None
    touched: list[tuple[int, str]] = field(default_factory=list)


@_handler("boot")
def step_boot(ctx: RunContext, step: Step) -> None:
    """Build (or reuse) the image, start QEMU, wait for the shell, attach GDB."""
    from harness.console import Console
    from harness.images import build_image
    from harness.qemu import Machine

    sc = ctx.scenario
    t = time.monotonic()
    ctx.image = build_image(sc.guest["image"], progress=_progress(ctx))
    ctx.add_phase("image", time.monotonic() - t)
    _record_image(ctx)
    m = sc.machine
    append = " ".join(filter(None, [ctx.image.append, sc.guest.get("append", "")]))
    ctx.machine = ctx.stack.enter_context(Machine(
        arch=ctx.image.arch, kernel=ctx.image.kernel, initrd=ctx.image.initrd, append=append,
        memory=str(m.get("memory", "1G")), smp=m.get("smp", 1), accel=m.get("accel", "tcg"),
        cpu=m.get("cpu"), artifacts=ctx.run_dir,
        vmrun_log=m.get("vmrun_log", ctx.image.arch == "x86_64"),   # SVM vmrun! lines
        name=sc.name))
    ctx.console = ctx.stack.enter_context(Console.connect(
        ctx.machine.console_path, log_path=ctx.run_dir / "console.log", os_name=sc.guest["os"]))
    boot_timeout = step.timeout or sc.timeouts["boot"]
    # probes typed before /init opens the console can wedge the arm64 PL011's input (seen:
    # no echo ever after); wait for init's line first, then probe for the shell
    if ctx.image.ready:
        ctx.console.expect(re.escape(ctx.image.ready), timeout=boot_timeout)
    ctx.console.wait_for_shell(timeout=boot_timeout)
    ctx.properties["guest.uname"] = ctx.console.run("uname -r", timeout=30).output.strip()


def _progress(ctx: RunContext) -> Any:
    log = ctx.run_dir / "image-build.log"

    def emit(line: str) -> None:
        with log.open("a") as f:
            f.write(line.rstrip() + "\n")
        print(f"[{ctx.scenario.name}] {line}", flush=True)
    return emit


def _record_image(ctx: RunContext) -> None:
    """Image provenance into the JUnit properties and the artifacts."""
    from harness.artifacts import write_json
    man = ctx.image.manifest
    write_json(ctx.run_dir / "image-manifest.json", man)
    ctx.properties["image.name"] = ctx.image.name
    ctx.properties["image.kernel_release"] = ctx.image.kernel_release
    for key, val in sorted(man.get("files", {}).items()):
        ctx.properties[f"image.sha256.{key}"] = str(val)
    for pkg in man.get("packages", []):
        ctx.properties[f"package.{pkg['name']}"] = f"{pkg['version']} sha256:{pkg['sha256']}"


@_handler("shell")
def step_shell(ctx: RunContext, step: Step) -> None:
    """Run a guest shell command; check its status and, optionally, its output."""
    args = step.args if isinstance(step.args, dict) else {"cmd": step.args}
    want = args.get("status", 0)
    res = ctx.console.run(args["cmd"], timeout=ctx.step_timeout(step), check=False)
    if res.status != want:
        raise StepFailed(f"{step.label}: `{args['cmd']}` exited {res.status}, expected "
                            f"{want}; output tail:\n{res.output[-1500:]}")
    if "expect" in args and not re.search(args["expect"], res.output, re.M):
        raise StepFailed(f"{step.label}: output of `{args['cmd']}` does not match "
                            f"/{args['expect']}/; output tail:\n{res.output[-1500:]}")


@_handler("wait")
def step_wait(ctx: RunContext, step: Step) -> None:
    """Wait for a pattern on the console (panics end the wait at once)."""
    ctx.console.expect(step.args["pattern"], timeout=ctx.step_timeout(step))


def guest_shell_wait(ctx: RunContext, cond: str, timeout: float) -> None:
    """Poll a guest shell condition until it holds, in one guest command."""
    loops = max(1, int(timeout / 0.2))
    cmd = (f"i=0; while ! {{ {cond}; }}; do i=$((i+1)); [ $i -ge {loops} ] && exit_=1 && break; "
           f"sleep 0.2; done; [ -z \"$exit_\" ]")
    res = ctx.console.run(cmd, timeout=timeout + 30, check=False)
    ctx.console.run("unset exit_ i", timeout=30, check=False)
    if res.status != 0:
        raise InfraError(f"guest condition not met within {timeout:.0f} s: {cond}")


@_handler("workload")
def step_workload(ctx: RunContext, step: Step) -> None:
    """Start the KVM workload in the background; wait until it holds (or ends)."""
    from harness.workload import workload_argv

    params = dict(step.args)
    wid = params.pop("id", f"w{len(ctx.workloads) + 1}")
    run = WorkloadRun(id=wid, params=params, out=f"/tmp/slat-{wid}.out",
                      fifo=f"/tmp/slat-{wid}.fifo")
    run.touched = [(parse_addr(t["gpa"]), t["access"]) for t in params.get("touch", [])]
    argv = " ".join(shlex.quote(a) for a in workload_argv(params))
    ctx.console.run(f"rm -f {run.fifo} {run.out}; mkfifo {run.fifo}", timeout=30)
    line = (f"( {argv} 0<>{run.fifo}; echo \"@@SLAT {{\\\"event\\\":\\\"exit_status\\\","
            f"\\\"status\\\":$?}}\" ) >{run.out} 2>&1 &")
    ctx.console.run(line, timeout=30)
    run.pid = int(ctx.console.run("echo $!", timeout=30).output.strip().splitlines()[-1])
    ctx.workloads[wid] = run
    hold = params.get("hold", True)
    done = '"event":"exit_status"'
    cond = f"grep -q -e '\"event\":\"hold\"' -e '{done}' {run.out}" if hold else \
        f"grep -q '{done}' {run.out}"
    guest_shell_wait(ctx, cond, ctx.step_timeout(step))
    _read_report(ctx, run)
    if run.status not in (None, 0):
        raise InfraError(f"{step.label}: workload exited {run.status}:\n"
                         f"{_report_tail(ctx, run)}")


def _read_report(ctx: RunContext, run: WorkloadRun) -> None:
    from harness.workload import parse_report
    text = ctx.console.run(f"cat {run.out}", timeout=60).output
    (ctx.run_dir / f"workload-{run.id}.out").write_text(text)
    run.report = parse_report(text.splitlines())
    m = re.findall(r'"event":\s*"exit_status",\s*"status":\s*(\d+)', text)
    run.status = int(m[-1]) if m else None


def _report_tail(ctx: RunContext, run: WorkloadRun) -> str:
    return "\n".join((ctx.run_dir / f"workload-{run.id}.out").read_text().splitlines()[-15:])


@_handler("release")
def step_release(ctx: RunContext, step: Step) -> None:
    """Let holding workloads go on to teardown, and wait until they end."""
    wid = step.args.get("workload")
    runs = [ctx.workloads[wid]] if wid else [r for r in ctx.workloads.values()
                                             if not r.released]
    for run in runs:
        ctx.console.run(f"echo go > {run.fifo}", timeout=30)
        run.released = True
    for run in runs:
        guest_shell_wait(ctx, f"grep -q '\"event\":\"exit_status\"' {run.out}",
                         ctx.step_timeout(step))
        _read_report(ctx, run)
        if run.status != 0:
            raise InfraError(f"{step.label}: workload {run.id} exited {run.status}:\n"
                             f"{_report_tail(ctx, run)}")


@_handler("check")
def step_check(ctx: RunContext, step: Step) -> None:
    """Extract the nested tables, compare with the model, record findings."""
    from harness.check import run_check
    run_check(ctx, step)


@_handler("inject")
def step_inject(ctx: RunContext, step: Step) -> None:
    """Corrupt one nested leaf through GDB (restored after the next check)."""
    from harness.check import run_inject
    run_inject(ctx, step)
