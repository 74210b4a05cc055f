"""The check and inject steps: observe, model, diff; corrupt a leaf and restore it."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.diff import coalesce, diff, find_mapping
from harness.errors import InfraError, ScenarioError
from harness.findings import Finding
from harness.hypervisors import HYPERVISORS, Hypervisor, default_hypervisor
from harness.models import MODELS, Access, DictBacking, MemRange, VMDesc
from harness.observe import ObservedVM
from harness.scenario import Step, parse_addr

__all__ = ["run_check", "run_inject", "slat_json", "hypervisor_of", "vm_desc"]


@dataclass
class Injection:
    """A corrupted leaf and what to put back."""

    addr: int
    original: int
    corrupted: int
    gpa: int
    kind: str
    restore: bool


def hypervisor_of(ctx: Any) -> Hypervisor:
    """The scenario's hypervisor record (named, or the default for its guest)."""
    sc = ctx.scenario
    name = sc.doc.get("hypervisor") or default_hypervisor(sc.guest["os"], ctx.image.arch)
    try:
        return HYPERVISORS[name]
    except ScenarioError as e:
        raise sc.error(str(e), "hypervisor") from None


def _observer(hv: Hypervisor) -> tuple[Callable[[Any], None], Callable[[Any], list[ObservedVM]]]:
    mod_name, fn = hv.observer.split(":")
    mod = importlib.import_module(mod_name)
    return mod.prepare, getattr(mod, fn)


def _gdb(ctx: Any) -> Any:
    """Attach GDB once per run (lazily: booting does not need it)."""
    if ctx.gdb is None:
        from harness.gdb import GdbSession
        ctx.gdb = ctx.stack.enter_context(GdbSession(
            ctx.machine.gdb_path, ctx.run_dir / "gdb.log", arch=ctx.image.arch))
    return ctx.gdb


def observe(ctx: Any) -> list[ObservedVM]:
    """Halt L1, find its live VMs and walk their roots, resume L1."""
    hv = hypervisor_of(ctx)
    prepare, obs = _observer(hv)
    t = time.monotonic()
    prepare(ctx)                       # kallsyms, BTF: the guest must still run
    ctx.add_phase("prepare", time.monotonic() - t)
    gdb = _gdb(ctx)
    with gdb.halted():
        return obs(ctx)


def _workload_vms(ctx: Any, released: bool = False) -> list[tuple[Any, Any]]:
    """(workload run, reported VM) for the VMs still held (or, with *released*, let go)."""
    return [(run, vm) for run in ctx.workloads.values()
            if run.report is not None and run.released == released
            for vm in run.report.vms]


# workload slot flag -> MemRange flag
SLOT_FLAGS = {"ro": "readonly", "log": "dirty_log", "huge": "huge"}


def vm_desc(run: Any, vm: Any, name: str, options: dict[str, Any]) -> VMDesc:
    """The model's input from what the workload reported and the scenario touched."""
    ranges = tuple(MemRange(gpa=s.gpa, size=s.size, kind="ram",
                            prot="rx" if "ro" in s.flags else "rwx", hva=s.hva,
                            flags=frozenset(SLOT_FLAGS.get(f, f) for f in s.flags))
                   for s in vm.slots)
    touched = [Access(g, a) for g, a in run.touched]
    touched += [Access(g, "x") for g in vm.code_pages]
    return VMDesc(name=name, ranges=ranges, backing=DictBacking(dict(vm.pagemap)),
                  touched=tuple(touched), options=dict(options))


def _hvas(vm: Any) -> frozenset[int]:
    return frozenset(s.hva for s in vm.slots)


def _match(ctx: Any, observed: list[ObservedVM], step: Step
           ) -> tuple[list[tuple[ObservedVM, Any]], list[ObservedVM]]:
    """Pair observed VMs with held ones by their memslot host addresses.

    Returns the pairs and the *leftovers*: live VMs that match a VM whose
    workload already tore it down (a finding, not a harness failure).  A live
    VM that matches nothing the workloads reported, or a held VM discovery did
    not find, is an infrastructure error: the check could not judge it.
    """
    held = {_hvas(vm): (run, vm) for run, vm in _workload_vms(ctx)}
    gone = {_hvas(vm) for _, vm in _workload_vms(ctx, released=True)}
    pairs = [(ob, held[ob.slot_hvas]) for ob in observed if ob.slot_hvas in held]
    leftovers = [ob for ob in observed if ob.slot_hvas not in held and ob.slot_hvas in gone]
    strangers = [ob.name for ob in observed
                 if ob.slot_hvas not in held and ob.slot_hvas not in gone]
    if strangers:
        raise InfraError(f"{step.label}: live VM(s) {strangers} match no VM a workload "
                         "reported (memslot addresses differ)")
    want = step.args.get("vms", len(held)) if isinstance(step.args, dict) else len(held)
    if len(pairs) != want:
        raise InfraError(f"{step.label}: discovery found {len(pairs)} of the held VM(s), "
                         f"expected {want}: {[o.name for o in observed]}")
    return pairs, leftovers


def _leftover(ob: ObservedVM) -> Finding:
    return Finding("leftover", ob.name, None, expected="no live VM after teardown",
                   observed=f"on the VM list with {len(ob.walk.mappings)} mapping(s)",
                   detail="the workload destroyed this VM but the kernel still lists it")


def run_check(ctx: Any, step: Step) -> None:
    """Extract, model, diff; record slat state and findings; undo injections."""
    t0 = time.monotonic()
    before = ctx.phases.get("prepare", 0.0)
    observed = observe(ctx)
    ctx.add_phase("extract", time.monotonic() - t0 - (ctx.phases.get("prepare", 0.0) - before))
    t1 = time.monotonic()
    hv = hypervisor_of(ctx)
    model = MODELS[hv.model]
    record = {"step": step.label, "vms": []}
    try:
        pairs, leftovers = _match(ctx, observed, step)
        for ob, (run, vm) in pairs:
            desc = vm_desc(run, vm, f"{run.id}/vm{vm.index}", dict(hv.model_options))
            found = coalesce(diff(ob.walk, model.expect(desc)))
            _record(ctx, step, found)
            record["vms"].append(_vm_json(ob, desc.name, found))
        for ob in leftovers:
            _record(ctx, step, [_leftover(ob)])
            record["vms"].append(_vm_json(ob, ob.name, [_leftover(ob)]))
    finally:
        ctx.checks.append(record)
        ctx.add_phase("diff", time.monotonic() - t1)
        _restore(ctx)


def _record(ctx: Any, step: Step, found: list[Finding]) -> None:
    """Add a check's findings; remember the first step that had any."""
    if found and not ctx.finding_step:
        ctx.finding_step = step.label
    ctx.findings.extend(found)


def _vm_json(ob: ObservedVM, name: str, found: list[Finding]) -> dict[str, Any]:
    return {"vm": name, "observed_as": ob.name, "format": ob.format, "root": f"{ob.root:#x}",
            "discovery": ob.discovery, "slots": ob.slots,
            "mappings": [m.to_json() for m in ob.walk.mappings],
            "structural": [vars(f) for f in ob.walk.findings],
            "tables_read": ob.walk.tables_read, "findings": len(found)}


def _restore(ctx: Any) -> None:
    """Put back every injected entry that asked for it (so teardown sees sane tables)."""
    keep = []
    for inj in ctx.injected:
        if inj.restore:
            with ctx.gdb.halted():
                ctx.gdb.write_phys(inj.addr, inj.original.to_bytes(8, "little"))
        else:
            keep.append(inj)
    ctx.injected = keep


def run_inject(ctx: Any, step: Step) -> None:
    """Corrupt the leaf that maps the step's GPA in the chosen VM."""
    from harness.inject import corrupt
    args = step.args
    gpa = parse_addr(args["gpa"])
    observed = observe(ctx)
    pairs, _ = _match(ctx, observed, step)
    index = args.get("vm", 0)
    if index >= len(pairs):
        raise ctx.scenario.error(f"no VM {index}: {len(pairs)} live", "steps", step.index,
                                 "inject", "vm")
    ob = pairs[index][0]
    m = find_mapping(sorted(ob.walk.mappings, key=lambda x: x.gpa), gpa)
    if m is None:
        raise InfraError(f"{step.label}: nothing maps {gpa:#x} in {ob.name}; cannot inject")
    addr = m.table + 8 * m.index
    new = corrupt(ob.format, args["kind"], m.raw, args.get("permission", "w"))
    with ctx.gdb.halted():
        ctx.gdb.write_phys(addr, new.to_bytes(8, "little"))
        back = int.from_bytes(ctx.gdb.read_phys(addr, 8), "little")
    if back != new:
        raise InfraError(f"{step.label}: wrote {new:#x} at {addr:#x}, read back {back:#x}")
    ctx.injected.append(Injection(addr, m.raw, new, gpa, args["kind"],
                                  args.get("restore", True)))
    with (ctx.run_dir / "injections.log").open("a") as log:
        log.write(f"{step.label}: {args['kind']} gpa={gpa:#x} entry@{addr:#x} "
                  f"{m.raw:#018x} -> {new:#018x}\n")


def slat_json(ctx: Any) -> dict[str, Any]:
    """The extracted state: the last check's VMs at top level, every check below."""
    last = next((c["vms"] for c in reversed(ctx.checks) if c["vms"]), [])
    return {"scenario": ctx.scenario.name, "vms": last, "checks": ctx.checks}
