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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness import oracles
from harness.arch import x86_phys_bits
from harness.context import DETAIL, Injection, KernelFacts, RunContext, WorkloadRun
from harness.diff import coalesce, diff, find_mapping
from harness.errors import InfraError, ScenarioError
from harness.findings import Finding
from harness.formats import FORMATS
from harness.formats.base import Mapping, hexs
from harness.guests.record import BackingQuery
from harness.images import Image
from harness.images.kernel import config_facts, release_facts
from harness.inject import Target, corrupt, target_frame
from harness.models.base import Access, MemRange, VMDesc
from harness.models.bhyve import vm_setup_memory
from harness.models.vmd_memmap import create_memory_map, cross_check
from harness.observe import KernelView, ObservedVM
from harness.scenario.spec import CheckStep, InjectStep, StepSpec
from harness.target import l1_memories, settle_in_kernel
from harness.workload import VMReport

__all__ = ["run_check", "run_inject", "slat_json", "kernel_facts", "observe", "vm_desc",
           "halted_view", "judge", "match_vms", "vm_json", "record_findings",
           "restore_injections", "frame_counts"]

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
        facts = {**_image_facts(image), **_machine_facts(ctx),
                 **_per_boot(ctx, "facts-" + hv.name, lambda: dict(hv.facts(console)))}
        ctx.kernel = KernelFacts(symbols=symbols, types=guest.types(image, hv.type_modules),
                                 facts=facts)
        ctx.add_phase("prepare", time.monotonic() - t)
    return ctx.kernel


def _image_facts(image: Image) -> dict[str, int]:
    """Facts of the image's kernel: its version, and its configuration (``config``)."""
    config = Path(image.dir) / "config"
    facts = release_facts(image.kernel_release)
    return {**facts, **config_facts(config.read_text())} if config.is_file() else facts


def _machine_facts(ctx: RunContext) -> dict[str, int]:
    """What the L0 machine's configuration says of the L1's CPU, for hypervisors that
    cannot ask the L1 (QEMU x86: MAXPHYADDR, from ``-cpu``); the L1's own answer wins."""
    m, arch = ctx.scenario.machine, ctx.hypervisor.arch_record
    if m.emulator != "qemu" or arch.name != "x86_64":
        return {}
    return {"maxphyaddr": x86_phys_bits(m.cpu or arch.cpu, m.accel)}


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
                       for s in vm.slots + vm.removed)
    else:
        ranges = _named_ranges(run.spec.driver, vm, ob)
    touched = [Access(t.gpa, t.access) for t in run.spec.touch]
    if vm.raced:        # what a race left: executed pages may be executable, no more
        touched = [a for a in touched if a.access == "x"]
    touched += [Access(g, "x") for g in vm.code_pages]
    query = BackingQuery(pid=vm.pid, slots=tuple((r.gpa, r.size, r.hva or 0) for r in ranges
                                                 if r.kind != "mmio"),
                         reported=vm.pagemap, l1=view)
    return VMDesc(name=f"{run.id}/vm{vm.index}", ranges=ranges, backing=backing(query),
                  touched=tuple(touched), removed=tuple(s.gpa for s in vm.removed),
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


def frame_counts(facts: oracles.FrameFacts | None) -> dict[str, int]:
    """How many frame references were read, and their range (slat.json)."""
    counts = list(facts.refcounts.values()) if facts is not None else []
    return {"frames": len(counts), "min": min(counts), "max": max(counts)} if counts else {}


def judge(ctx: RunContext, ob: ObservedVM, desc: VMDesc, vm: VMReport, run: WorkloadRun,
          facts: oracles.FrameFacts) -> list[Finding]:
    """The model's findings for one observed VM, and the oracles' (harness.oracles)."""
    expectation = ctx.model.expect(desc)
    if vm.raced:        # a race or a teardown may have zapped any page: none is required
        expectation.required = []
    found = memmap_findings(desc.name, vm, ob, run.spec.driver)
    found += coalesce(diff(ob.walk, expectation))
    found += oracles.freed_frames(desc.name, ob, facts)
    found += coalesce(oracles.absent_backing(desc.name, ob, vm.absent))
    return found + ctx.tables.findings(desc.name, ob, desc)


def run_check(ctx: RunContext, step: CheckStep) -> None:
    """Extract, model, diff; record slat state and findings; undo injections.

    L1 stays halted from discovery until every VM's backing and the frame references
    (harness.oracles) are read; the diff runs after.  A failing check of a run that keeps
    its failure (``ctx.keep_failure``) leaves its injections in place.
    """
    t0 = time.monotonic()
    before = ctx.phases.get("prepare", 0.0)
    record: dict[str, Any] = {"step": step.label, "vms": []}
    t1: float | None = None
    failed = False
    try:
        with halted_view(ctx) as view:
            observed = ctx.hypervisor.observe(view)
            facts = oracles.gather(view, observed, ctx.hypervisor.frames)
            ctx.add_phase("extract",
                          time.monotonic() - t0 - (ctx.phases.get("prepare", 0.0) - before))
            t1 = time.monotonic()
            pairs, leftovers = _match(ctx, observed, step)
            descs = [(ob, vm_desc(ctx, run, vm, ob, view), vm, run) for ob, run, vm in pairs]
        record["frames"] = facts.unavailable or "read"
        record["refcounts"] = frame_counts(facts)
        ctx.tables.settle(oracles.vm_key(vm) for _, _, vm, _ in descs)
        for ob, desc, vm, run in descs:
            found = judge(ctx, ob, desc, vm, run, facts)
            ctx.tables.seen(oracles.vm_key(vm), desc.name, ob, desc)
            _record(ctx, step, found)
            failed = failed or bool(found)
            record["vms"].append(_vm_json(ob, desc.name, found, _process_id(step, ob, vm)) |
                                 ({"race": vm.race} if vm.race else {}))
        for ob in leftovers:
            _record(ctx, step, [_leftover(ob)])
            record["vms"].append(_vm_json(ob, ob.name, [_leftover(ob)]))
        failed = failed or bool(leftovers)
        for vm_line in check_lines(record):
            ctx.progress(DETAIL + vm_line)
    finally:
        if t1 is not None:            # discovery ran: record the check, undo injections
            ctx.checks.append(record)
            ctx.add_phase("diff", time.monotonic() - t1)
            if not (failed and ctx.keep_failure):
                _restore(ctx)


def check_lines(record: dict[str, Any]) -> list[str]:
    """One line per checked VM of a check's record: what -v prints.

    >>> check_lines({"step": "s", "vms": [{"vm": "w1/vm0", "observed_as": "kvm@0x1",
    ...     "format": "npt", "root": "0x5000", "tables_read": 4, "findings": 0,
    ...     "mappings": [{"size": "0x1000"}, {"size": "0x200000"}, {"size": "0x1000"}]}]})
    ['w1/vm0 (kvm@0x1): npt root 0x5000, 4 tables, 3 leaves (4K x2, 2M x1), 0 findings']
    """
    out = []
    for vm in record["vms"]:
        sizes = Counter(int(m["size"], 16) for m in vm.get("mappings", ()))
        by = ", ".join(f"{_size_name(sz)} x{n}" for sz, n in sorted(sizes.items()))
        out.append(f"{vm['vm']} ({vm.get('observed_as', '?')}): {vm.get('format', '?')} root "
                   f"{vm.get('root')}, {vm.get('tables_read', 0)} tables, "
                   f"{sum(sizes.values())} leaves" + (f" ({by})" if by else "")
                   + f", {vm.get('findings', 0)} findings")
    return out


def _size_name(size: int) -> str:
    return f"{size >> 30}G" if size >= 1 << 30 else f"{size >> 20}M" if size >= 1 << 20 \
        else f"{size >> 10}K"


def _record(ctx: RunContext, step: StepSpec, found: list[Finding]) -> None:
    """Add a check's findings, each naming the step; remember the first step that had any."""
    if found and not ctx.finding_step:
        ctx.finding_step = step.label
    ctx.findings.extend(replace(f, step=step.label) for f in found)


def _process_id(step: StepSpec, ob: ObservedVM, vm: VMReport) -> int:
    """The workload's process id, which the kernel's (``discovery.pid``) must match.

    Linux's observers give ``kvm->mm->owner->tgid`` (``kvm->userspace_pid`` is the
    creating thread, kept as ``discovery.tid``), OpenBSD's ``vm_creator_pid``,
    DragonFly's the region's process (``p_pid``); bhyve's none.
    """
    kernel = ob.discovery.get("pid")
    if kernel is not None and kernel != vm.pid:
        raise InfraError(f"{step.label}: {ob.name} belongs to process {kernel} "
                         f"({ob.discovery.get('pid_source', 'kernel')}), the workload that "
                         f"reported it is process {vm.pid}")
    return vm.pid


_HEX_KEYS = ("gpa", "size", "hva", "hpa", "root", "va", "segoff")


def _hex_addrs(d: dict[str, Any]) -> dict[str, Any]:
    """*d* with its address and size values as hex strings (slat.json writes them one way).

    >>> _hex_addrs({"id": 1, "gpa": 4096, "size": 8192, "kind": "ram"})
    {'id': 1, 'gpa': '0x1000', 'size': '0x2000', 'kind': 'ram'}
    """
    return {k: hexs(v) if k in _HEX_KEYS and isinstance(v, int) else v for k, v in d.items()}


def _vm_json(ob: ObservedVM, name: str, found: list[Finding], pid: int | None = None
             ) -> dict[str, Any]:
    """One VM in slat.json: addresses as hex strings; ``discovery.pid`` the process id."""
    discovery = dict(ob.discovery)
    if pid is not None:
        if discovery.get("pid") is None:
            discovery["pid_source"] = "workload report"
        discovery["pid"] = pid
    return {"vm": name, "observed_as": ob.name, "format": ob.format, "root": hexs(ob.root),
            "discovery": discovery, "slots": [_hex_addrs(s) for s in ob.slots],
            "mappings": [m.to_json() for m in ob.walk.mappings],
            "structural": [f.to_json() for f in ob.walk.findings],
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


def _victim(ctx: RunContext, pairs: list[Pair], step: InjectStep) -> tuple[ObservedVM, VMReport]:
    """The observed VM that is VM *step.vm* of workload *step.workload*, and its report."""
    wid = step.workload or next(r.id for r in ctx.workloads.values() if r.holding)
    for ob, run, vm in pairs:
        if run.id == wid and vm.index == step.vm:
            return ob, vm
    raise InfraError(f"{step.label}: VM {step.vm} of workload {wid!r} is not among the "
                     f"live VMs {[ob.name for ob, _, _ in pairs]}")


def _backing(ob: ObservedVM, vm: VMReport, gpa: int) -> int | None:
    """The L1 address backing *gpa* in this VM: its nested leaf, else the workload's pagemap."""
    m = find_mapping(sorted(ob.walk.mappings, key=lambda x: x.gpa), gpa)
    if m is not None:
        return m.hpa + (gpa - m.gpa)
    page = vm.pagemap.get(gpa & ~0xFFF)
    return None if page is None else page + (gpa & 0xFFF)


def _inject_error(ctx: RunContext, step: InjectStep, message: str) -> ScenarioError:
    """A ScenarioError at the inject step of the scenario file."""
    at = ("steps", step.index, "inject")
    return ScenarioError(message, file=str(ctx.scenario.path),
                         line=ctx.scenario.line_of(*at), field=".".join(map(str, at)))


def _inject_value(ctx: RunContext, step: InjectStep, ob: ObservedVM, vm: VMReport,
                  m: Mapping) -> int:
    """The corrupted value of leaf *m*, through the format's leaf editor.

    A ``to`` target is the frame backing another GPA of the VM (its nested leaf, or its
    pagemap entry) or an HPA, aligned to the leaf's size; a change the leaf cannot take
    (a target that is not a frame of the leaf's size, no reserved bit at its level) is a
    scenario error at the inject step.
    """
    editor = FORMATS[ob.format].editor
    if editor is None:
        raise _inject_error(ctx, step, f"format {ob.format} has no leaf editor: cannot inject")
    try:
        frame = None
        if step.to_gpa is not None or step.to_hpa is not None:
            frame = target_frame(m, Target(gpa=step.to_gpa, hpa=step.to_hpa),
                                 lambda g: _backing(ob, vm, g))
        limits = getattr(ob.params, "limits", None)
        return corrupt(editor(ob.params), step.corruption, m, step.permission,
                       frame=frame, mem_size=getattr(limits, "mem_size", None))
    except ValueError as e:
        raise _inject_error(ctx, step, f"{step.label}: cannot inject into leaf {m.raw:#x} "
                            f"(level {m.level}) at {m.gpa:#x}: {e}") from None


def run_inject(ctx: RunContext, step: InjectStep) -> None:
    """Corrupt the leaf that maps the step's GPA in the chosen VM."""
    pairs, _ = _match(ctx, observe(ctx), step)
    ob, vm = _victim(ctx, pairs, step)
    m = find_mapping(sorted(ob.walk.mappings, key=lambda x: x.gpa), step.gpa)
    if m is None:
        raise InfraError(f"{step.label}: nothing maps {step.gpa:#x} in {ob.name}; "
                         "cannot inject")
    addr = m.entry
    new = _inject_value(ctx, step, ob, vm, m)
    target = ctx.target()
    with target.halted():
        target.write_phys(addr, new.to_bytes(8, "little"))
        back = int.from_bytes(target.read_phys(addr, 8), "little")
    if back != new:
        raise InfraError(f"{step.label}: wrote {new:#x} at {addr:#x}, read back {back:#x}")
    ctx.injected.append(Injection(addr, m.raw, new, step.gpa, step.corruption, step.restore))
    with (ctx.run_dir / "injections.log").open("a") as log:
        log.write(f"{step.label}: {step.corruption} gpa={step.gpa:#x} leaf {m.gpa:#x}+"
                  f"{m.size:#x} level {m.level} entry@{addr:#x} {m.raw:#018x} -> {new:#018x}\n")


def slat_json(ctx: RunContext) -> dict[str, Any]:
    """The extracted state: the last check's VMs at top level, every check below."""
    last: list[Any] = next((c["vms"] for c in reversed(ctx.checks) if c["vms"]), [])
    return {"scenario": ctx.scenario.name, "vms": last, "checks": ctx.checks}


# the glue a check during a release (harness.midcheck) shares
match_vms = _match
vm_json = _vm_json
record_findings = _record
restore_injections = _restore
