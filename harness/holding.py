"""The workload in the guest shell: waiting for conditions, reading its report, and
releasing it when it holds.

Shared by the step handlers (:mod:`harness.steps`) and the check that halts L1 in the
middle of a release (:mod:`harness.midcheck`).
"""

from __future__ import annotations

import re
import shlex

from harness.console import Console
from harness.context import RunContext, WorkloadRun
from harness.errors import InfraError
from harness.scenario.spec import StepSpec
from harness.workload import parse_report

__all__ = ["POLL", "guest_shell_wait", "EXIT_EVENT", "exited_cond", "held_cond",
           "read_report", "report_tail", "release_command", "wait_released"]

POLL = 0.05          # seconds between two tests of a guest condition


def guest_shell_wait(console: Console, cond: str, timeout: float) -> None:
    """Poll a guest shell condition until it holds, in one guest command (every 50 ms:
    a warm scenario is a second long, and each wait would otherwise add up to 0.2 s)."""
    loops = max(1, int(timeout / POLL))
    cmd = (f"i=0; while ! {{ {cond}; }}; do i=$((i+1)); [ $i -ge {loops} ] && exit_=1 && break; "
           f"sleep {POLL}; done; [ -z \"$exit_\" ]")
    res = console.run(cmd, timeout=timeout + 30, check=False)
    console.run("unset exit_ i", timeout=30, check=False)
    if res.status != 0:
        raise InfraError(f"guest condition not met within {timeout:.0f} s: {cond}")


EXIT_EVENT = '"event":"exit_status"'


def exited_cond(run: WorkloadRun) -> str:
    return f"grep -q '{EXIT_EVENT}' {shlex.quote(run.out)}"


def held_cond(run: WorkloadRun, holds: int) -> str:
    """Guest condition: the workload printed its *holds*-th hold event."""
    return f"[ $(grep -c '\"event\":\"hold\"' {shlex.quote(run.out)}) -ge {holds} ]"


def read_report(ctx: RunContext, run: WorkloadRun) -> None:
    text = ctx.console().run(f"cat {shlex.quote(run.out)}", timeout=60).output
    (ctx.run_dir / f"workload-{run.id}.out").write_text(text)
    run.report = parse_report(text.splitlines())
    m = re.findall(r'"event":\s*"exit_status",\s*"status":\s*(\d+)', text)
    run.status = int(m[-1]) if m else None


def report_tail(ctx: RunContext, run: WorkloadRun) -> str:
    return "\n".join((ctx.run_dir / f"workload-{run.id}.out").read_text().splitlines()[-15:])


def release_command(run: WorkloadRun) -> str:
    """The guest command that releases a holding workload (the FIFO opened read-write:
    never blocks, even if the workload is gone)."""
    return f"echo go 1<>{shlex.quote(run.fifo)}"


def wait_released(ctx: RunContext, runs: list[WorkloadRun], step: StepSpec) -> None:
    """Wait until each released workload holds again (next cycle, or its race's end)
    or exits, and read its report."""
    console = ctx.console()
    for run in runs:
        released = run.spec.holds - run.holds_left
        cond = exited_cond(run) if not run.holds_left else \
            f"{held_cond(run, released + 1)} || {exited_cond(run)}"
        guest_shell_wait(console, cond, ctx.step_timeout(step))
        read_report(ctx, run)
        if run.status not in (None, 0) or (run.holds_left == 0 and not run.exited):
            raise InfraError(f"{step.label}: workload {run.id} exited {run.status}:\n"
                             f"{report_tail(ctx, run)}")
