"""A check in the middle of a teardown: release a workload, halt L1 on the way, judge.

``check: {during: w1, at: {breakpoint: SYMBOL, hits: N}}`` arms a breakpoint at a
kernel function (its address from the guest OS's symbol source, read while L1 runs),
sends the release without waiting for the shell (L1 may stop in the middle of the
command), and lets L1 run until the *N*-th call; ``at: {delay: S}`` halts L1 *S*
seconds after the release instead.  Then it observes as every check does and judges
what a half-destroyed VM may look like:

* a VM of the released workload is either **intact** -- every present leaf maps the
  frame the workload reported for its GPA (a moved slot's new range is allowed,
  unjudged), nothing is required to be mapped any more (teardown zaps) -- or
  **cleanly gone** (no longer on the hypervisor's list);
* **never pointing at freed memory**: every leaf's frame is still referenced by the
  L1 kernel (``freed_frame``, :mod:`harness.oracles`), and no leaf maps a page the
  workload's process no longer has (``stale``);
* VMs of other workloads must be there, intact as in any check.

Then the breakpoint goes, L1 runs on, and the release completes as a ``release``
step's would.  Nothing here names an operating system or a hypervisor.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from harness import oracles
from harness.check import (
    frame_counts,
    halted_view,
    judge,
    kernel_facts,
    record_findings,
    vm_desc,
    vm_json,
)
from harness.context import RunContext, WorkloadRun
from harness.errors import InfraError
from harness.findings import Finding
from harness.holding import release_command, wait_released
from harness.observe import ObservedVM
from harness.scenario.spec import CheckStep, MidPoint
from harness.target import Breakpoints
from harness.workload import SlotReport, VMReport

__all__ = ["run_mid_check", "pair_mid"]

Pair = tuple[ObservedVM, WorkloadRun, VMReport]


def _symbol(ctx: RunContext, name: str) -> int:
    """The kernel address of function *name*, read through the guest OS's symbol source."""
    guest = ctx.guest
    if guest.symbols is None:
        raise InfraError(f"the {guest.name} guest has no symbol source: {guest.missing}")
    where = ctx.run_dir / "breakpoints" / name
    where.mkdir(parents=True, exist_ok=True)
    return int(guest.symbols(ctx.console(), ctx.require_image(), [name], where)[name])


def _hvas(vm: VMReport) -> frozenset[int]:
    return frozenset(s.hva for s in vm.slots)


def pair_mid(ctx: RunContext, observed: list[ObservedVM], run: WorkloadRun,
             released: tuple[VMReport, ...], label: str
             ) -> tuple[list[Pair], list[VMReport], list[ObservedVM]]:
    """Observed VMs paired with held ones; the released workload's VMs that are gone;
    leftovers.  A released VM matches when its memslots are a subset of what it had."""
    others = {_hvas(vm): (r, vm) for r in ctx.workloads.values() if r is not run
              for vm in r.held_vms()}
    gone_before = {_hvas(vm) for r in ctx.workloads.values() for vm in r.gone_vms()
                   if all(vm is not v for v in released)}
    pairs: list[Pair] = []
    leftovers, strangers = [], []
    for ob in observed:
        mine = next((vm for vm in released if ob.slot_hvas and ob.slot_hvas <= _hvas(vm)), None)
        if ob.slot_hvas in others:
            pairs.append((ob, *others[ob.slot_hvas]))
        elif mine is not None:
            pairs.append((ob, run, mine))
        elif ob.slot_hvas in gone_before:
            leftovers.append(ob)
        else:
            strangers.append(ob.name)
    if strangers:
        raise InfraError(f"{label}: live VM(s) {strangers} match no VM a workload reported")
    missing = [f"{r.id}/vm{vm.index}" for r, vm in others.values()
               if all(p[2] is not vm for p in pairs)]
    if missing:
        raise InfraError(f"{label}: held VM(s) {missing} of other workloads not found")
    gone = [vm for vm in released if all(p[2] is not vm for p in pairs)]
    return pairs, gone, leftovers


def _half_destroyed(ctx: RunContext, run: WorkloadRun, vm: VMReport) -> VMReport:
    """What a VM being torn down may show: its ranges (and a race's moved range), nothing
    required to be touched any more."""
    race = run.spec.race
    moved: tuple[SlotReport, ...] = ()
    if race is not None and race.mode == "move_slot" and race.to is not None:
        s = vm.slots[race.slot]
        moved = (replace(s, gpa=race.to),)
    return replace(vm, slots=vm.slots + moved, removed=(), race={"mid_teardown": True})


def _halt(ctx: RunContext, step: CheckStep, at: MidPoint, sent: float,
          addr: int | None) -> dict[str, Any]:
    """Bring L1 to the chosen moment; what it was."""
    if addr is None:
        time.sleep(max(0.0, (at.delay or 0.0) - (time.monotonic() - sent)))
        return {"after_s": round(time.monotonic() - sent, 6)}
    target = ctx.target()
    assert isinstance(target, Breakpoints)
    pc = 0
    for hit in range(at.hits):
        if hit:
            target.resume()
        pc = target.wait_stop(ctx.step_timeout(step))
    return {"pc": f"{pc:#x}", "after_s": round(time.monotonic() - sent, 6)}


def _judge_all(ctx: RunContext, step: CheckStep, run: WorkloadRun,
               released: tuple[VMReport, ...], record: dict[str, Any]) -> None:
    with halted_view(ctx) as view:
        observed = ctx.hypervisor.observe(view)
        facts = oracles.gather(view, observed, ctx.hypervisor.frames)
        pairs, gone, leftovers = pair_mid(ctx, observed, run, released, step.label)
        seen = [(ob, owner, _half_destroyed(ctx, owner, vm) if owner is run else vm)
                for ob, owner, vm in pairs]
        descs = [(ob, owner, vm, vm_desc(ctx, owner, vm, ob, view)) for ob, owner, vm in seen]
    record["gone"] = [f"{run.id}/vm{vm.index}" for vm in gone]
    record["refcounts"] = frame_counts(facts)
    for ob, owner, vm, desc in descs:
        found = judge(ctx, ob, desc, vm, owner, facts)
        record_findings(ctx, step, found)
        record["vms"].append(vm_json(ob, desc.name, found) |
                             {"state": "intact" if owner is run else "held"})
    for ob in leftovers:
        f = Finding("leftover", ob.name, None, expected="no live VM after teardown",
                    observed=f"on the VM list with {len(ob.walk.mappings)} mapping(s)",
                    detail="a workload destroyed this VM before, but the kernel still lists it")
        record_findings(ctx, step, [f])
        record["vms"].append(vm_json(ob, ob.name, [f]))


def _summary(step: CheckStep, run: WorkloadRun, record: dict[str, Any]) -> str:
    intact = [v["vm"] for v in record["vms"] if v.get("state") == "intact"]
    found = sum(v["findings"] for v in record["vms"])
    return (f"{step.label}: during the release of {run.id}, at {record['at']}, "
            f"{record['after_s']:.3f} s after it: intact {intact or 'none'}, gone "
            f"{record['gone'] or 'none'}; {found or 'no'} finding(s)")


def run_mid_check(ctx: RunContext, step: CheckStep) -> None:
    """Release ``step.during`` and check L1 in the middle of its teardown."""
    assert step.during is not None
    run = ctx.workloads[step.during]
    if not run.holding:
        raise InfraError(f"{step.label}: workload {run.id} is not holding")
    if run.spec.driver != "slat-workload":
        raise InfraError(f"{step.label}: a check during the release of a {run.spec.driver} "
                         "VM is not supported (its release is a command, not the workload's)")
    at = step.at or MidPoint(delay=0.0)
    kernel_facts(ctx)               # over the console, before L1 may stop mid-command
    addr = None
    if at.symbol is not None:
        target = ctx.target()
        if not isinstance(target, Breakpoints):
            raise InfraError(f"{step.label}: this machine's debug target has no breakpoints")
        addr = _symbol(ctx, at.symbol)
        target.set_breakpoint(addr)
    released = run.held_vms()
    record: dict[str, Any] = {"step": step.label, "during": run.id, "at": at.label, "vms": []}
    sent = time.monotonic()
    ctx.console().send_line(release_command(run))    # L1 may stop before the shell answers
    run.holds_left -= 1
    try:
        record |= _halt(ctx, step, at, sent, addr)
        _judge_all(ctx, step, run, released, record)
    finally:
        ctx.checks.append(record)
        if addr is not None:
            target = ctx.target()
            assert isinstance(target, Breakpoints)
            target.clear_breakpoint(addr)
            target.resume()
    ctx.progress(_summary(step, run, record))
    wait_released(ctx, [run], step)
