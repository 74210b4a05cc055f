"""A whole run without a VM: a scripted Linux guest running the workload, a fake target
holding real NPT tables (built by the independent encoder), and registries that hold them.

``FakeWorld`` is one L1: the workload's report lines (as the C workload prints them),
the L1 memory with the nested tables KVM would have built for those VMs, and a
``FakeGuest`` whose rules answer the harness's commands (start the workload, cat its
report, release it).  ``world.services()`` gives the runner registries in which the
``linux`` guest and ``linux-kvm-svm`` hypervisor read from this world: the same runner,
steps and check glue as a live run, the real NPT walker and KVM model.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from encoders import NptEncoder, Spec, build

from harness.context import Services, default_services
from harness.formats.npt import NptParams
from harness.formats.npt import walk as walk_npt
from harness.guests import GUEST_OSES
from harness.hypervisors import HYPERVISORS
from harness.images import Image
from harness.machines.base import MachineConfig
from harness.machines.fake import FakeGuest, FakeMachine, Rule
from harness.mem import DictMem
from harness.models.base import DictBacking
from harness.observe import KernelView, ObservedVM
from harness.oracles import FrameRefs
from harness.registry import Registry
from harness.target import FakeTarget

PAGE = 4096
MEM = 1 << 28


@dataclass
class FakeVM:
    """One VM the fake workload creates: its slots (gpa, size, hva) and backing frames."""

    index: int
    slots: list[tuple[int, int, int]]
    root: int
    frames: dict[int, int]                 # gpa page -> L1 frame
    mapped: list[int] = field(default_factory=list)   # pages KVM mapped (touched + code)


def _slot_lines(vm: FakeVM) -> list[str]:
    return [json.dumps({"event": "slot", "vm": vm.index, "slot": i, "gpa": g, "size": s,
                        "hva": h, "flags": ""}) for i, (g, s, h) in enumerate(vm.slots)]


def report_lines(vms: list[FakeVM], pid: int = 4242) -> list[str]:
    """What ``slat-workload`` prints up to its hold, for *vms*."""
    lines = []
    for vm in vms:
        lines.append(json.dumps({"event": "vm", "vm": vm.index, "pid": pid, "cycle": 0}))
        lines += _slot_lines(vm)
        lines.append(json.dumps({"event": "code", "vm": vm.index, "gpa": 0}))
        lines.append(json.dumps({"event": "exit", "vm": vm.index, "reason": "hlt"}))
        runs = [[g, f // PAGE, 1] for g, f in sorted(vm.frames.items())]
        lines.append(json.dumps({"event": "pagemap", "vm": vm.index, "slot": 0, "runs": runs}))
    lines.append(json.dumps({"event": "hold"}))
    return ["@@SLAT " + ln for ln in lines]


class FakeWorld:
    """One scripted L1 with a held workload of *n_vms* VMs, each with one 64 KiB slot at 0."""

    def __init__(self, n_vms: int = 1, touched: tuple[int, ...] = (0x2000,)) -> None:
        self.mem = DictMem(size=MEM)
        self.vms: list[FakeVM] = []
        for i in range(n_vms):
            frames = {g: 0x100000 * (i + 2) + g for g in range(0, 0x10000, PAGE)}
            vm = FakeVM(i, [(0, 0x10000, 0x7F0000000000 + i * 0x1000000)], 0x10000 * (i + 1),
                        frames, mapped=[0, *touched])
            specs = [Spec(g, frames[g], PAGE, True, True, True) for g in vm.mapped]
            build(self.mem, NptEncoder(kvm=True), vm.root, 4, specs)
            self.vms.append(vm)
        self.target = FakeTarget(self.mem, registers={"cs": 0x10, "cr4": 0})
        self.released = False
        self.destroyed = False          # KVM really destroyed the VMs at release
        self.guest = FakeGuest(self.rules())
        self.observe_error: BaseException | None = None       # raised by every observe
        self.observe_errors: list[BaseException | None] = []  # raised one per run, in order
        self.machines: list[FakeMachine] = []
        self.boot_id = "fake-boot-1"    # what the guest says its boot id is
        self.observe_delay = 0.0        # seconds each observe takes (a hung discovery)
        self.kernel_pid: int | None = None   # the VMs' process as the kernel names it
        self.exit_delay = 0.0           # seconds the machine takes to shut down
        self.refcounts: dict[int, int] = {}   # frame -> the L1 kernel's count (default 1)
        self.started = 0                # workloads started

    def machine(self, config: MachineConfig) -> FakeMachine:
        """A new boot of this world: the workload starts afresh."""
        self.released = False
        if self.observe_errors:
            self.observe_error = self.observe_errors.pop(0)
        m = _SlowExit(config, self.guest, self.target, self.exit_delay)
        self.machines.append(m)
        return m

    def machine_alive(self) -> bool:
        return any(m.alive() for m in self.machines)

    # -- the scripted guest ------------------------------------------------------------

    def report(self) -> str:
        lines = report_lines(self.vms)
        if self.released:
            lines += [f'@@SLAT {{"event":"destroyed","vm":{v.index}}}' for v in self.vms]
            lines += ['@@SLAT {"event":"done","status":0}',
                      '@@SLAT {"event":"exit_status","status":0}']
        return "\n".join(lines) + "\n"

    def release(self, m: re.Match[str]) -> tuple[str, int]:
        self.released = True
        return "", 0

    def start(self, m: re.Match[str]) -> tuple[str, int]:
        """A workload starts afresh (again, in a repeated run inside one boot)."""
        self.released = False
        self.started += 1
        return "", 0

    def rules(self) -> list[Rule]:
        return [Rule(r"^uname -r$", "6.1.0-fake\n"),
                Rule(r"'address sizes' /proc/cpuinfo", "address sizes\t: 40 bits physical, "
                     "48 bits virtual\n"),
                Rule(r"^rm -f .*mkfifo"), Rule(r"^\( slat-workload ", answer=self.start),
                Rule(r"^echo \$!$", "4242\n"), Rule(r"^i=0; while"), Rule(r"^unset exit_ i$"),
                Rule(r"^cat /tmp/slat-w1\.out$", answer=lambda m: (self.report(), 0)),
                Rule(r"^echo go 1<>", answer=self.release),
                Rule(r"^cat /proc/sys/kernel/random/boot_id$",
                     answer=lambda m: (self.boot_id + "\n", 0))]

    # -- the hypervisor over this world ------------------------------------------------

    def observe(self, view: KernelView, released: bool | None = None) -> list[ObservedVM]:
        """KVM's VM list as this world holds it: every VM until it is destroyed (with
        *released* given: as if the workload were, or were not, released)."""
        if self.observe_delay:
            time.sleep(self.observe_delay)
        if self.observe_error is not None:
            raise self.observe_error
        gone = self.released if released is None else released
        if self.destroyed or (gone and not self.leftover):
            return []
        out = []
        for vm in self.vms:
            params = NptParams(levels=4, flavour="kvm")
            discovery = {} if self.kernel_pid is None else {"pid": self.kernel_pid}
            out.append(ObservedVM(f"kvm@{vm.index}", "npt", vm.root, params,
                                  walk_npt(view.mem.phys, vm.root, params),
                                  slot_hvas=frozenset(h for _, _, h in vm.slots),
                                  slots=[{"id": i, "gpa": g, "size": sz, "hva": h, "flags": ""}
                                         for i, (g, sz, h) in enumerate(vm.slots)],
                                  discovery=discovery))
        return out

    leftover = False                   # the VM survives its workload's teardown (a bug)

    def read_refcounts(self, view: KernelView, vms: Any, frames: Any) -> dict[int, int]:
        """The fake L1 kernel's references: :attr:`refcounts`, else one per frame."""
        return {f: self.refcounts.get(f, 1) for f in frames}

    def services(self, tmp_path: Path) -> Services:
        """Default services with this world's machine, image, guest and hypervisor."""
        base = default_services()
        image = Image(name="linux-amd64", arch="x86_64", dir=tmp_path, kernel=tmp_path / "k",
                      initrd=tmp_path / "i", modules=tmp_path, manifest={"files": {}},
                      kernel_release="6.1.0-fake")
        guest = replace(GUEST_OSES["linux"], symbols=lambda *a: {}, types=lambda *a: _NoTypes(),
                        backing=lambda query: DictBacking(dict(query.reported)))
        hv = replace(HYPERVISORS["linux-kvm-svm"], observe=self.observe, fault_log=False,
                     frames=FrameRefs("fake refcounts", self.read_refcounts))
        machines: Registry[Any] = Registry("machine backend")
        machines.add("qemu", self.machine)
        return Services(_one(base.guests, guest), _one(base.hypervisors, hv), base.models,
                        machines, lambda name, progress: image, states=tmp_path / "cache")


class _SlowExit(FakeMachine):
    """A fake machine whose shutdown takes a while (time for a second Ctrl-C)."""

    def __init__(self, config: MachineConfig, guest: FakeGuest, target: FakeTarget,
                 delay: float) -> None:
        super().__init__(config, guest, target)
        self.delay = delay

    def __exit__(self, *exc: Any) -> None:
        if self.delay:
            print("shutting down", flush=True)
            time.sleep(self.delay)
        super().__exit__(*exc)


class _NoTypes:
    """Types nobody asks for (the fake observer reads no kernel structure)."""

    def offsetof(self, spec: str, path: str) -> int:
        raise AssertionError("the fake world has no kernel types")

    sizeof = member_type = is_signed = offsetof  # type: ignore[assignment]


def _one(base: Registry[Any], record: Any) -> Registry[Any]:
    """*base* with *record* in place of the record of the same name."""
    out: Registry[Any] = Registry(base.what)
    for name, rec in base.items():
        out.add(name, record if name == record.name else rec)
    return out


def machine_config(tmp_path: Path) -> MachineConfig:
    from harness.arch import ARCHES
    from harness.machines.base import KernelBoot
    return MachineConfig(arch=ARCHES["x86_64"], boot=KernelBoot(tmp_path / "k"),
                         artifacts=tmp_path, cpu="max")
