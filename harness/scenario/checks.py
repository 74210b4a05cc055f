"""What the schema cannot check: names against registries, references between steps,
the architecture's rules, addresses.  Every problem is reported, none stops the others.

*add(message, *path)* records one error at the field *path* (see
:class:`harness.scenario.load._Errors`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.errors import RegistryLookupError
from harness.scenario.spec import (
    BootStep,
    CheckStep,
    InjectStep,
    ReleaseStep,
    Scenario,
    ShellStep,
    SlotSpec,
    WaitStep,
    WorkloadStep,
)

__all__ = ["resolve_names", "check_scenario", "Add"]

Add = Callable[..., None]
PAGE = 4096


def _lookup(add: Add, registry: Any, name: str, *at: object) -> Any:
    """The record, or None after reporting the miss (with the valid names)."""
    try:
        return registry[name]
    except RegistryLookupError as e:
        add(str(e), *at)
        return None


def resolve_names(doc: dict[str, Any], add: Add) -> tuple[str, str]:
    """Check the registry names; return the hypervisor and model the run will use.

    The guest OS, the image's OS and architecture, the hypervisor's OS and
    architecture and the model must agree: an OpenBSD guest needs an OpenBSD image.
    """
    from harness.findings import FINDING_KINDS
    from harness.guests import GUEST_OSES
    from harness.hypervisors import HYPERVISORS, default_hypervisor
    from harness.images import IMAGES, image_facts
    from harness.machines import MACHINES

    g = doc["guest"]
    guest = _lookup(add, GUEST_OSES, g["os"], "guest", "os")
    facts = image_facts(g["image"]) if _lookup(add, IMAGES, g["image"], "guest", "image") \
        else None
    if facts is not None:
        from harness.images import IMAGE_BUILDERS
        _lookup(add, IMAGE_BUILDERS, facts.builder, "guest", "image")
    if guest is not None and facts is not None and facts.os != guest.name:
        add(f"image {g['image']!r} holds a {facts.os} guest, not {guest.name}",
            "guest", "image")
    _lookup(add, MACHINES, doc.get("machine", {}).get("emulator", "qemu"),
            "machine", "emulator")
    for i, f in enumerate(doc.get("expect", {}).get("findings", [])):
        if f["kind"] not in FINDING_KINDS:
            add(str(RegistryLookupError("finding kind", f["kind"], list(FINDING_KINDS))),
                "expect", "findings", i, "kind")
    if guest is None or facts is None:
        return "", ""
    name = doc.get("hypervisor") or default_hypervisor(guest.name, facts.arch,
                                                       facts.hypervisor)
    if name is None:
        add(f"no hypervisor is known for the {guest.name} guest on {facts.arch}", "guest")
        return "", ""
    hv = _lookup(add, HYPERVISORS, name, "hypervisor")
    if hv is None:
        return "", ""
    if (hv.guest_os, hv.arch) != (guest.name, facts.arch):
        add(f"hypervisor {name!r} runs in a {hv.guest_os} {hv.arch} guest, but image "
            f"{g['image']!r} is {facts.os} {facts.arch}", "hypervisor")
    model = doc.get("model") or hv.models[0]
    if model not in hv.models:
        add(str(RegistryLookupError(f"model for {name}", model, list(hv.models))), "model")
    return name, model


# ---- steps ---------------------------------------------------------------------------

@dataclass
class _Held:
    """A workload that holds VMs at the current step, and how many holds are left."""

    step: WorkloadStep
    left: int


class _StepChecker:
    """Walks the steps in order, tracking which workloads hold VMs."""

    def __init__(self, sc: Scenario, add: Add) -> None:
        self.sc = sc
        self.add = add
        self.workloads: dict[str, WorkloadStep] = {}
        self.held: dict[str, _Held] = {}
        self.released: dict[str, int] = {}      # id -> line of the release that ended it

    def at(self, step_index: int, kind: str, *rest: object) -> tuple[object, ...]:
        return ("steps", step_index, kind, *rest)

    def run(self) -> None:
        steps = self.sc.steps
        if not isinstance(steps[0], BootStep):
            self.add("the first step must be 'boot'", "steps", 0)
        for st in steps[1:]:
            if isinstance(st, BootStep):
                self.add("only the first step may be 'boot'", "steps", st.index)
        for st in steps:
            getattr(self, f"step_{st.kind}")(st)

    def step_boot(self, st: BootStep) -> None:
        pass

    def step_shell(self, st: ShellStep) -> None:
        if st.expect is not None:
            _regex(self.add, st.expect, *self.at(st.index, "shell", "expect"))

    def step_wait(self, st: WaitStep) -> None:
        _regex(self.add, st.pattern, *self.at(st.index, "wait", "pattern"))

    def step_workload(self, st: WorkloadStep) -> None:
        if st.id in self.workloads:
            self.add(f"workload id {st.id!r} is used twice (first at line "
                     f"{self.workloads[st.id].line})", *self.at(st.index, "workload", "id"))
        self.workloads[st.id] = st
        _check_slots(self.sc, st, self.add)
        if st.driver == "vmd":
            _check_vmd(self.sc, st, self.add)
        if st.driver == "bhyvectl":
            _check_bhyvectl(self.sc, st, self.add)
        if self.sc.hypervisor in VKERNEL_HYPERVISORS:
            _check_vkernel(st, self.add)
        if st.holds:
            self.held[st.id] = _Held(st, st.holds)

    def _workload_ref(self, wid: str, *at: object) -> WorkloadStep | None:
        if wid in self.workloads:
            return self.workloads[wid]
        known = sorted(self.workloads)
        self.add(str(RegistryLookupError("workload", wid, known)) if known
                 else f"no workload {wid!r}: no workload step comes before this one", *at)
        return None

    def _not_holding(self, wid: str) -> str:
        w = self.workloads[wid]
        if w.hold == "none":
            return f"workload {wid!r} does not hold (hold: none)"
        return f"workload {wid!r} was already released (line {self.released.get(wid, 0)})"

    def step_release(self, st: ReleaseStep) -> None:
        self._release(st, st.workload, self.at(st.index, "release", "workload"))

    def _release(self, st: ReleaseStep | CheckStep, workload: str | None,
                 at: tuple[object, ...]) -> None:
        if workload is not None:
            if self._workload_ref(workload, *at) is None:
                return
            if workload not in self.held:
                self.add(self._not_holding(workload), *at)
                return
            targets = [workload]
        else:
            targets = sorted(self.held)
            if not targets:
                self.add("nothing to release: no workload holds VMs at this point",
                         *at[:-1])
        for wid in targets:
            self.held[wid].left -= 1
            if self.held[wid].left == 0:
                del self.held[wid]
                self.released[wid] = st.line

    def held_vms(self) -> int:
        return sum(h.step.vms_at_hold(h.step.holds - h.left) for h in self.held.values())

    def step_check(self, st: CheckStep) -> None:
        if st.during is not None:
            if st.vms is not None:
                self.add("a check during a release cannot name vms: a VM being torn down "
                         "may be intact or gone", *self.at(st.index, "check", "vms"))
            self._release(st, st.during, self.at(st.index, "check", "during"))
            return
        if st.at is not None:
            self.add("'at' needs 'during': the workload whose release is observed",
                     *self.at(st.index, "check", "at"))
        want = self.held_vms()
        if st.vms is not None and st.vms != want:
            who = ", ".join(f"{w}: {h.step.vms_at_hold(h.step.holds - h.left)}"
                            for w, h in sorted(self.held.items()))
            self.add(f"check expects {st.vms} live VM(s), but the workloads hold {want} at "
                     f"this point{f' ({who})' if who else ''}",
                     *self.at(st.index, "check", "vms"))

    def step_inject(self, st: InjectStep) -> None:
        at = self.at(st.index, "inject")
        wid = st.workload or (next(iter(self.held)) if len(self.held) == 1 else "")
        if not wid:
            self.add("name the workload whose VM to corrupt (inject.workload): "
                     + (f"{', '.join(sorted(self.held))} hold VMs" if self.held
                        else "no workload holds VMs at this point"), *at)
            return
        w = self._workload_ref(wid, *at, "workload")
        if w is None:
            return
        if wid not in self.held:
            self.add(self._not_holding(wid), *at, "workload")
            return
        if st.vm >= w.vms:
            self.add(f"workload {wid!r} has {w.vms} VM(s): no VM {st.vm}", *at, "vm")
        page = st.gpa & ~(PAGE - 1)
        if not any(t.gpa & ~(PAGE - 1) == page for t in w.touch):
            self.add(f"inject at {st.gpa:#x}: workload {wid!r} touches no byte of page "
                     f"{page:#x}, so there is no entry to corrupt", *at, "gpa")
        _check_inject_target(st, w, self.add, *at)


def _check_inject_target(st: InjectStep, w: WorkloadStep, add: Add, *at: object) -> None:
    """``to`` only moves a frame; a ``to.gpa`` lies in a slot of the workload (its frame
    is then in the VM's pagemap or nested tables)."""
    if st.to_gpa is None and st.to_hpa is None:
        return
    if st.corruption != "frame":
        add(f"'to' is for kind 'frame', not {st.corruption!r}", *at, "to")
    elif st.to_gpa is not None and not any(s.gpa <= st.to_gpa < s.end for s in w.slots):
        add(f"inject target gpa {st.to_gpa:#x} is in no slot of workload {w.id!r}",
            *at, "to", "gpa")


def _regex(add: Add, pattern: str, *at: object) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # FutureWarnings about nested sets
            re.compile(pattern)
    except re.error as e:
        add(f"not a valid regular expression: {e}", *at)


def _l2_address_bits(sc: Scenario, st: WorkloadStep, add: Add) -> tuple[int, str]:
    """How many GPA bits the workload's L2 can reach on this machine, and why.

    The architecture's bound follows the machine (x86: the L1's physical-address
    width and paging depth; arm64: the VM's IPA size); a hypervisor whose workload
    backend runs the L2 in a narrower mode lowers it.  A vkernel's "GPA" is a user
    virtual address of the L1 process.
    """
    from harness.hypervisors import HYPERVISORS
    if sc.hypervisor in VKERNEL_HYPERVISORS:
        return VKERNEL_VA_BITS, "an x86-64 user address"
    hv = HYPERVISORS[sc.hypervisor]
    arch = hv.arch_record
    for key in ("ipa_bits",):
        if getattr(st, key) is not None and key not in arch.workload_options:
            add(f"{key} is for {', '.join(_archs_with(key))} guests only, not {arch.name}",
                "steps", st.index, "workload", key)
    cpu = sc.machine.cpu or arch.cpu
    try:
        bits = arch.l2_address_bits(cpu, sc.machine.accel, st.ipa_bits)
    except ValueError:              # a bad -cpu property: _check_cpu reports it once
        return 64, "an unknown CPU"
    why = (f"an {arch.name} L2 with IPA size {bits}" if "ipa_bits" in arch.workload_options
           else f"an {arch.name} L2 on -cpu {cpu} ({sc.machine.accel})")
    if hv.l2_address_bits is not None and hv.l2_address_bits < bits:
        bits, why = hv.l2_address_bits, f"the L2 of {hv.name}'s workload backend"
    return bits, why


def _archs_with(option: str) -> list[str]:
    from harness.arch import ARCHES
    return [name for name, a in ARCHES.items() if option in a.workload_options]


def _check_slots(sc: Scenario, st: WorkloadStep, add: Add) -> None:
    """Alignment, wrap, overlap, the L2's reach; every touch inside a slot."""
    bits, why = _l2_address_bits(sc, st, add)
    limit = 1 << bits
    spans: list[SlotSpec] = []
    for j, s in enumerate(st.slots):
        at = ("steps", st.index, "workload", "slots", j)
        for what, value in (("gpa", s.gpa), ("size", s.size)):
            if value % PAGE:
                add(f"slot {what} {value:#x} is not a multiple of 4 KiB", *at, what)
        if s.end > limit:
            add(f"slot [{s.gpa:#x}, {s.end:#x}) reaches beyond what the L2 can address "
                f"({bits} bits: below {limit:#x}): {why} cannot use it", *at)
        for other in spans:
            if s.gpa < other.end and other.gpa < s.end:
                add(f"slot [{s.gpa:#x}, {s.end:#x}) overlaps [{other.gpa:#x}, "
                    f"{other.end:#x})", *at)
        spans.append(s)
    for j, t in enumerate(st.touch):
        if not any(s.gpa <= t.gpa < s.end for s in spans):
            add(f"touched gpa {t.gpa:#x} is in no slot", "steps", st.index, "workload",
                "touch", j, "gpa")


VMD_GUESTS = ("openbsd",)


def _check_vmd(sc: Scenario, st: WorkloadStep, add: Add) -> None:
    """``driver: vmd``: an OpenBSD guest, one VM, one cycle, one flagless slot at GPA 0
    whose size (a multiple of 1 MiB) is the VM's memory, no touches."""
    at = ("steps", st.index, "workload")
    if sc.guest.os not in VMD_GUESTS:
        add(f"driver vmd runs in an OpenBSD guest, not {sc.guest.os}", *at, "driver")
    if st.vms != 1 or st.cycles != 1 or st.threads:
        add("driver vmd starts one VM once (vms: 1, cycles: 1, no threads)", *at, "driver")
    if len(st.slots) != 1 or st.slots[0].gpa != 0 or st.slots[0].flags \
            or st.slots[0].size % (1 << 20):
        add("driver vmd takes one slot {gpa: 0, size: S}: S (a multiple of 1M) is the VM's "
            "memory, vmd lays out its ranges", *at, "slots")
    if st.touch:
        add("driver vmd runs /bsd.rd as the L2: it takes no touches", *at, "touch")


BHYVECTL_GUESTS = ("freebsd",)


def _check_bhyvectl(sc: Scenario, st: WorkloadStep, add: Add) -> None:
    """``driver: bhyvectl``: a FreeBSD guest, one VM, one cycle, one flagless slot at GPA 0
    whose size (a multiple of 1 MiB) is the VM's memory, no touches (no vCPU runs)."""
    at = ("steps", st.index, "workload")
    if sc.guest.os not in BHYVECTL_GUESTS:
        add(f"driver bhyvectl runs in a FreeBSD guest, not {sc.guest.os}", *at, "driver")
    if st.vms != 1 or st.cycles != 1 or st.threads:
        add("driver bhyvectl makes one VM once (vms: 1, cycles: 1, no threads)", *at,
            "driver")
    if len(st.slots) != 1 or st.slots[0].gpa != 0 or st.slots[0].flags \
            or st.slots[0].size % (1 << 20):
        add("driver bhyvectl takes one slot {gpa: 0, size: S}: S (a multiple of 1M) is the "
            "VM's memory, libvmmapi lays out its ranges", *at, "slots")
    if st.touch:
        add("driver bhyvectl runs no vCPU: it takes no touches", *at, "touch")


VKERNEL_HYPERVISORS = ("dragonfly-vkernel",)
VKERNEL_VA_BITS = 47                 # x86-64 user addresses
VKERNEL_ALIGN = 2 << 20              # the workload's VPTE tables map 2 MiB per level-1 table
VKERNEL_MAX = 1 << 30                # ... under one level-3 entry


def _check_vkernel(st: WorkloadStep, add: Add) -> None:
    """The DragonFly vkernel workload (vkernel_dfly.c): one region ``{gpa: VA, size: S}``
    (VA and S multiples of 2 MiB, S at most 1 GiB, no flags), one or two VMs (the
    process's own map, and a ``vmspace_create()`` vmspace at VA + 1 GiB), one cycle,
    reads and writes only."""
    at = ("steps", st.index, "workload")
    if st.driver != "slat-workload":
        add(f"dragonfly-vkernel runs slat-workload, not driver {st.driver}", *at, "driver")
    if st.vms not in (1, 2) or st.cycles != 1 or st.threads or st.ipa_bits is not None:
        add("the vkernel workload maps one region in the process (vms: 1) and optionally "
            "a vmspace (vms: 2), once (cycles: 1), without threads or ipa_bits", *at)
    if len(st.slots) != 1 or st.slots[0].flags or st.slots[0].gpa % VKERNEL_ALIGN \
            or st.slots[0].size % VKERNEL_ALIGN or not 0 < st.slots[0].size <= VKERNEL_MAX:
        add("the vkernel workload takes one slot {gpa: VA, size: S}: VA and S multiples of "
            "2M, S at most 1G, no flags (the slot is the MAP_VPAGETABLE region)", *at, "slots")
    elif st.vms == 2 and st.slots[0].gpa + VKERNEL_MAX + st.slots[0].size \
            > 1 << VKERNEL_VA_BITS:
        add("with vms: 2 the vmspace's region lies at VA + 1G: it must stay below 2^47",
            *at, "slots")
    for j, t in enumerate(st.touch):
        if t.access not in ("r", "w"):
            add("the vkernel region is not executable: touches are r or w", *at, "touch", j,
                "access")


def _check_expect(sc: Scenario, workloads: dict[str, WorkloadStep], add: Add) -> None:
    if sc.expect.findings and sc.expect.verdict not in ("fail", "panic"):
        add(f"expect.findings needs verdict fail (or panic), not {sc.expect.verdict}",
            "expect", "verdict")
    for i, f in enumerate(sc.expect.findings):
        wid = f.workload or "w1"
        if f.workload is None and f.vm is None:
            continue
        if wid not in workloads:
            add(str(RegistryLookupError("workload", wid, sorted(workloads))),
                "expect", "findings", i, "workload")
        elif f.vm is not None and f.vm >= workloads[wid].vms:
            add(f"workload {wid!r} has {workloads[wid].vms} VM(s): no VM {f.vm}",
                "expect", "findings", i, "vm")


def _check_cpu(sc: Scenario, add: Add) -> None:
    """The properties of ``machine.cpu`` the harness reads (x86: ``phys-bits``)."""
    from harness.arch import x86_phys_bits
    from harness.hypervisors import HYPERVISORS
    if sc.machine.cpu is None or sc.hypervisor not in HYPERVISORS \
            or HYPERVISORS[sc.hypervisor].arch != "x86_64":
        return
    try:
        x86_phys_bits(sc.machine.cpu, sc.machine.accel)
    except ValueError as e:
        add(str(e), "machine", "cpu")


def check_scenario(sc: Scenario, add: Add) -> None:
    """Every check on the typed scenario; errors go to *add*."""
    from harness.scenario.extras import check_extras
    _check_cpu(sc, add)
    checker = _StepChecker(sc, add)
    checker.run()
    _check_expect(sc, checker.workloads, add)
    check_extras(sc, add)
