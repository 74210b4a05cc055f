"""The check and inject steps: observe, model, diff; corrupt a leaf and restore it.

The data path, by plain imports: :func:`kernel_facts` reads the hypervisor's
symbols and types through the guest OS's sources while L1 runs;
:func:`observe` halts L1 through the debug target and calls the hypervisor
record's observer with a :class:`~harness.observe.KernelView`; each observed VM
is paired with the VM a workload reported, turned into a
:class:`~harness.models.VMDesc` (backing from the guest OS's backing source),
judged by the scenario's model and diffed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from harness.context import Injection, KernelFacts, RunContext, WorkloadRun
from harness.diff import coalesce, diff, find_mapping
from harness.errors import InfraError
from harness.findings import Finding
from harness.guests.record import BackingQuery
from harness.inject import corrupt
from harness.models.base import Access, MemRange, VMDesc
from harness.models.bhyve import vm_setup_memory
from harness.models.vmd_memmap import create_memory_map, cross_check
from harness.observe import KernelView, ObservedVM
from harness.scenario.spec import CheckStep, InjectStep, StepSpec
from harness.target import l1_memories, settle_in_kernel
from harness.workload import VMReport

__all__ = ["run_check", "run_inject", "slat_json", "kernel_facts", "observe", "vm_desc",
           "halted_view"]

# workload slot flag -> MemRange flag
SLOT_FLAGS = {"ro": "readonly", "log": "dirty_log", "huge": "huge"}


def kernel_facts(ctx: RunContext) -> KernelFacts:
    """Symbols, types and facts, read once per boot while L1 runs."""
    if ctx.kernel is None:
        guest, hv = ctx.guest, ctx.hypervisor
        source = guest.symbols
        if source is None or guest.types is None:
            raise InfraError(f"the {guest.name} guest cannot be observed: {guest.missing}")
        t = time.monotonic()
        console, image = ctx.console(), ctx.require_image()
        names = tuple(dict.fromkeys((*hv.symbols, *guest.backing_symbols)))
        symbols = _per_boot(ctx, "symbols-" + _digest(names),
                            lambda: dict(source(console, image, names, ctx.run_dir)))
        facts = _per_boot(ctx, "facts-" + hv.name, lambda: dict(hv.facts(console)))
        ctx.kernel = KernelFacts(symbols=symbols, types=guest.types(image, hv.type_modules),
                                 facts=facts)
        ctx.add_phase("prepare", time.monotonic() - t)
    return ctx.kernel


def _digest(names: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]


def _per_boot(ctx: RunContext, what: str, read: Callable[[], dict[str, int]]
              ) -> dict[str, int]:
    """A per-boot fact: kept with the warm state of this very boot (same boot id, so same
    KASLR and module addresses), else read from the guest and kept there."""
    warm, boot_id = ctx.warm, ctx.boot_id
    if warm is not None and boot_id is not None:
        kept = warm.recall(what, boot_id)
        if isinstance(kept, dict):
            (ctx.run_dir / f"{what.split('-')[0]}.kept.json").write_text(
                f"{{\"boot_id\": \"{boot_id}\", \"from\": \"{warm.dir.name}\"}}\n")
            return {str(k): int(v) for k, v in kept.items()}
    value = read()
    if warm is not None and boot_id is not None:
        warm.remember(what, boot_id, value)
    return value


@contextmanager
def halted_view(ctx: RunContext) -> Iterator[KernelView]:
    """L1 halted in the kernel for the block, as observers and backing sources see it."""
    kernel = kernel_facts(ctx)
    arch = ctx.hypervisor.arch_record
    target = ctx.target()
    with target.halted():
        settle_in_kernel(target, arch.mode_registers, arch.in_kernel)
        yield KernelView(target=target, arch=arch, mem=l1_memories(target, ctx.ram()),
                         symbols=kernel.symbols, types=kernel.types, facts=kernel.facts,
                         fault_log=ctx.require_machine().fault_log)


def observe(ctx: RunContext) -> list[ObservedVM]:
    """Halt L1, find its live VMs and walk their roots, resume L1."""
    with halted_view(ctx) as view:
        return ctx.hypervisor.observe(view)


def vm_desc(ctx: RunContext, run: WorkloadRun, vm: VMReport, ob: ObservedVM | None = None,
            view: KernelView | None = None) -> VMDesc:
    """The model's input from what the workload reported and the scenario touched.

    A VM reported without slots (a vmd or bhyvectl VM: the command names its size, not
    its ranges) is described by that driver's memory map for the size, with each
    range's address from the kernel's own ranges (*ob*); the two must agree
    (:func:`memmap_findings`).
    *view* is the halted L1, for backing sources that walk the VMM process's tables.
    """
    backing = ctx.guest.backing
    if backing is None:
        raise InfraError(f"the {ctx.guest.name} guest has no backing source: "
                         f"{ctx.guest.missing}")
    if vm.slots:
        ranges = tuple(MemRange(gpa=s.gpa, size=s.size, kind="ram",
                                prot="rx" if "ro" in s.flags else "rwx", hva=s.hva,
                                flags=frozenset(SLOT_FLAGS.get(f, f) for f in s.flags))
                       for s in vm.slots)
    else:
        ranges = _named_ranges(run.spec.driver, vm, ob)
    touched = [Access(t.gpa, t.access) for t in run.spec.touch]
    touched += [Access(g, "x") for g in vm.code_pages]
    query = BackingQuery(pid=vm.pid, slots=tuple((r.gpa, r.size, r.hva or 0) for r in ranges
                                                 if r.kind != "mmio"),
                         reported=vm.pagemap, l1=view)
    return VMDesc(name=f"{run.id}/vm{vm.index}", ranges=ranges, backing=backing(query),
                  touched=tuple(touched),
                  options={**ctx.hypervisor.model_options,
                           **(ob.model_options if ob is not None else {})})


def _live_ranges(ob: ObservedVM | None) -> list[MemRange]:
    """The kernel's ranges of an observed VM (its ``slots`` with ``kind``)."""
    if ob is None:
        return []
    return [MemRange(int(s["gpa"]), int(s["size"]), kind=str(s.get("kind", "ram")),
                     hva=int(s["hva"]), name=f"vm_memranges[{s.get('id', i)}]")
            for i, s in enumerate(ob.slots)]


# the memory map a VM reported by name and size must have, by the driver that made it:
# vmd's create_memory_map(), libvmmapi's vm_setup_memory() (bhyvectl --set-mem)
MEMORY_MAPS: dict[str, Callable[[int], list[MemRange]]] = {
    "vmd": create_memory_map, "bhyvectl": vm_setup_memory}
MEMORY_MAP_NAMES = {"vmd": ("vmd's create_memory_map()", "vmctl -m {:#x}"),
                    "bhyvectl": ("libvmmapi's vm_setup_memory()", "bhyvectl --set-mem {:#x}")}


def _named_ranges(driver: str, vm: VMReport, ob: ObservedVM | None) -> tuple[MemRange, ...]:
    """The driver's memory map for the VM's size, each range at the kernel's address."""
    hvas = {r.gpa: r.hva for r in _live_ranges(ob)}
    return tuple(MemRange(p.gpa, p.size, kind=p.kind, hva=hvas.get(p.gpa), name=p.name)
                 for p in MEMORY_MAPS.get(driver, create_memory_map)(vm.memory))


def memmap_findings(name: str, vm: VMReport, ob: ObservedVM, driver: str = "vmd"
                    ) -> list[Finding]:
    """A VM reported by size (vmd, bhyvectl): the kernel's ranges against the memory map
    its VMM lays out for that size."""
    if vm.slots:
        return []
    layout = MEMORY_MAPS.get(driver, create_memory_map)
    expected, source = MEMORY_MAP_NAMES.get(driver, MEMORY_MAP_NAMES["vmd"])
    return [Finding("memmap", name, None, expected=expected, observed=diff,
                    detail=source.format(vm.memory))
            for diff in cross_check(layout(vm.memory), _live_ranges(ob))]


def _key(vm: VMReport) -> tuple[str, frozenset[int] | str]:
    """How a reported VM is recognised: by its name when the workload names it (vmd,
    bhyve: the kernel does not know where the VMM process maps the memory), else by
    its slot addresses."""
    if vm.name or not vm.slots:
        return ("name", vm.name)
    return ("hva", frozenset(s.hva for s in vm.slots))


def _keys(ob: ObservedVM) -> list[tuple[str, frozenset[int] | str]]:
    keys: list[tuple[str, frozenset[int] | str]] = [("hva", ob.slot_hvas)]
    if ob.discovery.get("vm_name"):
        keys.append(("name", str(ob.discovery["vm_name"])))
    return keys


Pair = tuple[ObservedVM, WorkloadRun, VMReport]


def _match(ctx: RunContext, observed: list[ObservedVM], step: StepSpec
           ) -> tuple[list[Pair], list[ObservedVM]]:
    """Pair observed VMs with held ones by their memslot host addresses (or, for VMs
    reported without slots, by name).

    Returns the pairs and the *leftovers*: live VMs that match a VM whose
    workload already tore it down (a finding, not a harness failure).  A live
    VM that matches nothing the workloads reported, or a held VM discovery did
    not find, is an infrastructure error: the check could not judge it.
    """
    held = {_key(vm): (run, vm) for run in ctx.workloads.values() for vm in run.held_vms()}
    gone = {_key(vm) for run in ctx.workloads.values() for vm in run.gone_vms()}
    pairs: list[Pair] = []
    leftovers, strangers = [], []
    for ob in observed:
        hit = next((k for k in _keys(ob) if k in held), None)
        if hit is not None:
            pairs.append((ob, *held[hit]))
        elif any(k in gone for k in _keys(ob)):
            leftovers.append(ob)
        else:
            strangers.append(ob.name)
    if strangers:
        raise InfraError(f"{step.label}: live VM(s) {strangers} match no VM a workload "
                         "reported (memslot addresses differ)")
    if len(pairs) != len(held):
        raise InfraError(f"{step.label}: discovery found {len(pairs)} of the {len(held)} "
                         f"held VM(s): {[o.name for o in observed]}")
    return pairs, leftovers


def _leftover(ob: ObservedVM) -> Finding:
    return Finding("leftover", ob.name, None, expected="no live VM after teardown",
                   observed=f"on the VM list with {ob.walk.leaf_count} mapping(s)",
                   detail="the workload destroyed this VM but the kernel still lists it")


def run_check(ctx: RunContext, step: CheckStep) -> None:
    """Extract, model, diff; record slat state and findings; undo injections.

    L1 stays halted from discovery until every VM's backing is read (a backing
    source may walk the VMM process's page tables); the diff runs after.
    """
    t0 = time.monotonic()
    before = ctx.phases.get("prepare", 0.0)
    record: dict[str, Any] = {"step": step.label, "vms": []}
    t1: float | None = None
    try:
        with halted_view(ctx) as view:
            observed = ctx.hypervisor.observe(view)
            ctx.add_phase("extract",
                          time.monotonic() - t0 - (ctx.phases.get("prepare", 0.0) - before))
            t1 = time.monotonic()
            pairs, leftovers = _match(ctx, observed, step)
            descs = [(ob, vm_desc(ctx, run, vm, ob, view), vm, run) for ob, run, vm in pairs]
        for ob, desc, vm, run in descs:
            found = memmap_findings(desc.name, vm, ob, run.spec.driver)
            found += coalesce(diff(ob.walk, ctx.model.expect(desc)))
            _record(ctx, step, found)
            record["vms"].append(_vm_json(ob, desc.name, found))
        for ob in leftovers:
            _record(ctx, step, [_leftover(ob)])
            record["vms"].append(_vm_json(ob, ob.name, [_leftover(ob)]))
    finally:
        if t1 is not None:            # discovery ran: record the check, undo injections
            ctx.checks.append(record)
            ctx.add_phase("diff", time.monotonic() - t1)
            _restore(ctx)


def _record(ctx: RunContext, step: StepSpec, found: list[Finding]) -> None:
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


def _restore(ctx: RunContext) -> None:
    """Put back every injected entry that asked for it (so teardown sees sane tables)."""
    keep = []
    for inj in ctx.injected:
        if inj.restore:
            target = ctx.target()
            with target.halted():
                target.write_phys(inj.addr, inj.original.to_bytes(8, "little"))
        else:
            keep.append(inj)
    ctx.injected = keep


def _victim(ctx: RunContext, pairs: list[Pair], step: InjectStep) -> ObservedVM:
    """The observed VM that is VM *step.vm* of workload *step.workload*."""
    wid = step.workload or next(r.id for r in ctx.workloads.values() if r.holding)
    for ob, run, vm in pairs:
        if run.id == wid and vm.index == step.vm:
            return ob
    raise InfraError(f"{step.label}: VM {step.vm} of workload {wid!r} is not among the "
                     f"live VMs {[ob.name for ob, _, _ in pairs]}")


def run_inject(ctx: RunContext, step: InjectStep) -> None:
    """Corrupt the leaf that maps the step's GPA in the chosen VM."""
    pairs, _ = _match(ctx, observe(ctx), step)
    ob = _victim(ctx, pairs, step)
    m = find_mapping(sorted(ob.walk.mappings, key=lambda x: x.gpa), step.gpa)
    if m is None:
        raise InfraError(f"{step.label}: nothing maps {step.gpa:#x} in {ob.name}; "
                         "cannot inject")
    addr = m.table + 8 * m.index
    new = corrupt(ob.format, step.corruption, m.raw, step.permission)
    target = ctx.target()
    with target.halted():
        target.write_phys(addr, new.to_bytes(8, "little"))
        back = int.from_bytes(target.read_phys(addr, 8), "little")
    if back != new:
        raise InfraError(f"{step.label}: wrote {new:#x} at {addr:#x}, read back {back:#x}")
    ctx.injected.append(Injection(addr, m.raw, new, step.gpa, step.corruption, step.restore))
    with (ctx.run_dir / "injections.log").open("a") as log:
        log.write(f"{step.label}: {step.corruption} gpa={step.gpa:#x} entry@{addr:#x} "
                  f"{m.raw:#018x} -> {new:#018x}\n")


def slat_json(ctx: RunContext) -> dict[str, Any]:
    """The extracted state: the last check's VMs at top level, every check below."""
    last: list[Any] = next((c["vms"] for c in reversed(ctx.checks) if c["vms"]), [])
    return {"scenario": ctx.scenario.name, "vms": last, "checks": ctx.checks}
