"""A saved L1 read offline (ELF core, kernel addresses through its own page tables), and
breakpoints: gdb's MI against a fake stub, and a check in the middle of a teardown on the
scripted machine."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from encoders import NptEncoder, Spec, Stage2Encoder, build
from fakes import FakeWorld, _one
from test_gdb import FakeGdb

from harness.elfcore import EM_AARCH64, CoreFile, write_core
from harness.errors import MemoryReadError
from harness.gdb import GdbSession, GdbTarget
from harness.kva import VA_WALKERS, arm64_translate, x86_translate
from harness.mem import DictMem
from harness.replay import CoreTarget
from harness.runner import run_scenario
from harness.scenario import load_scenario
from harness.target import Breakpoints, BreakpointTimeout, Leavable

PAGE = 4096
LOW48 = (1 << 48) - 1


def test_x86_kernel_addresses_through_4_and_5_level_tables() -> None:
    mem = DictMem(size=1 << 26)
    va4, va2m = 0xFFFFFFFF81234000, 0xFFFF888000400000
    build(mem, NptEncoder(), 0x100000, 4, [Spec(va4 & LOW48, 0x777000, PAGE, True, True, True),
                                           Spec(va2m & LOW48, 0x1200000, 2 << 20, True, True,
                                                True)])
    regs = {"cr3": 0x100000 | 0x5, "cr4": 0}              # PCID bits are not address bits
    assert x86_translate(mem, regs, va4 + 0x10) == 0x777010
    assert x86_translate(mem, regs, va2m + 0x12345) == 0x1212345
    with pytest.raises(MemoryReadError):
        x86_translate(mem, regs, 0xFFFFFFFF81300000)
    five = DictMem(size=1 << 26)
    va5 = 0xFF11000000003000
    build(five, NptEncoder(), 0x200000, 5, [Spec(va5 & ((1 << 57) - 1), 0x888000, PAGE, True,
                                                 True, True)])
    assert x86_translate(five, {"cr3": 0x200000, "cr4": 1 << 12}, va5 + 8) == 0x888008


def test_arm64_kernel_addresses_through_ttbr1_of_the_kernels_level() -> None:
    mem = DictMem(size=1 << 26)
    va, block = 0xFFFF800012345000, 0xFFFF000000200000
    build(mem, Stage2Encoder(), 0x100000, 4, [Spec(va & LOW48, 0x2444000, PAGE, True, True,
                                                   True),
                                              Spec(block & LOW48, 0x40200000, 2 << 20, True,
                                                   True, True)])
    tcr = 16 << 16 | 2 << 30                          # T1SZ 16 (48-bit), TG1 4 KiB
    vhe = {"cpsr": 0x9, "TTBR1_EL2": 0x100000, "TCR_EL2": tcr, "TTBR1_EL1": 0, "TCR_EL1": 0}
    assert arm64_translate(mem, vhe, va + 4) == 0x2444004
    assert arm64_translate(mem, vhe, block + 0x1008) == 0x40201008
    nvhe = {"cpsr": 0x5, "TTBR1_EL1": 0x100000 | 1 << 48, "TCR_EL1": tcr}   # ASID above
    assert arm64_translate(mem, nvhe, va) == 0x2444000
    with pytest.raises(MemoryReadError):
        arm64_translate(mem, nvhe, 0x0000000012345000)      # a user address


def test_a_core_file_round_trip_and_a_target_over_it(tmp_path: Path) -> None:
    mem = DictMem(size=1 << 26)
    va = 0xFFFF800012345000
    build(mem, Stage2Encoder(), 0x100000, 4, [Spec(va & LOW48, 0x2444000, PAGE, True, True,
                                                   True)])
    mem.write(0x2444000, b"struct kvm lives here")
    segments = [(pfn * PAGE, bytes(mem.pages[pfn])) for pfn in sorted(mem.pages)]
    write_core(tmp_path / "l1.core", segments, machine=EM_AARCH64)
    regs = {"cpsr": 0x5, "TTBR1_EL1": 0x100000, "TCR_EL1": 16 << 16 | 2 << 30,
            "VTTBR_EL2": 0x1234}
    with CoreFile(tmp_path / "l1.core") as core:
        assert core.machine == EM_AARCH64
        t = CoreTarget(core, regs, VA_WALKERS["aarch64"], [(0, 1 << 26)])
        assert t.read_virt(va, 21) == b"struct kvm lives here"
        assert t.translate(va + 2) == 0x2444002 and t.register("VTTBR_EL2") == 0x1234
        with t.halted():
            assert t.read_phys(0x2444000, 6) == b"struct"
        with pytest.raises(MemoryReadError):
            t.read_phys(0x5555000, 8)                    # not in the core
        with pytest.raises(Exception, match="read-only"):
            t.write_phys(0x2444000, b"x")
    (tmp_path / "junk").write_bytes(b"not an elf at all" * 10)
    with pytest.raises(Exception, match="not a readable ELF core"):
        CoreFile(tmp_path / "junk")


class BreakingGdb(FakeGdb):
    """The fake stub with breakpoints: L1 reaches *pc* after a continue."""

    def __init__(self) -> None:
        super().__init__()
        self.bkpts: dict[int, int] = {}
        self.reach: int | None = None
        self.regs["pc"] = 0

    def answer(self, tok: str, body: str) -> list[str]:
        if m := re.match(r"-break-insert \*(0x[0-9a-f]+)$", body):
            n = len(self.bkpts) + 1
            self.bkpts[n] = int(m.group(1), 16)
            return [f'{tok}^done,bkpt={{number="{n}",type="breakpoint",addr="{m.group(1)}"}}']
        if m := re.match(r"-break-delete (\d+)$", body):
            self.bkpts.pop(int(m.group(1)))
            return [f"{tok}^done"]
        return super().answer(tok, body)

    def get_gdb_response(self, timeout_sec: float = 1,
                         raise_error_on_timeout: bool = True) -> list[dict]:
        """A running L1 that reaches an armed address stops there."""
        if self.running and self.reach in self.bkpts.values():
            self.running = False
            self.regs["pc"] = self.reach
            n = next(k for k, v in self.bkpts.items() if v == self.reach)
            self.pending.append(f'*stopped,reason="breakpoint-hit",bkptno="{n}",'
                                f'frame={{addr="{self.reach:#x}"}}')
        return super().get_gdb_response(timeout_sec, raise_error_on_timeout)


def target(fake: FakeGdb, tmp_path: Path) -> GdbTarget:
    s = GdbSession(tmp_path / "gdb.sock", tmp_path / "gdb.log",
                   spawn=lambda gdb: fake).__enter__()  # type: ignore[arg-type,return-value]
    return GdbTarget(s, ram_ranges=lambda: [(0, 1 << 24)], translate=lambda va: va)


def test_gdb_target_breakpoints_stop_l1_where_asked(tmp_path: Path) -> None:
    fake = BreakingGdb()
    t = target(fake, tmp_path)
    assert isinstance(t, Breakpoints) and isinstance(t, Leavable)
    t.set_breakpoint(0xFFFFFFFFC0123450)
    assert fake.bkpts == {1: 0xFFFFFFFFC0123450} and fake.running    # inserted while halted
    fake.reach = 0xFFFFFFFFC0123450
    assert t.wait_stop(5.0) == 0xFFFFFFFFC0123450
    assert not fake.running and not t.session.running
    with t.halted():                                 # stays stopped at the breakpoint
        assert t.read_phys(0x5000, 0) == b""
    assert not fake.running
    t.clear_breakpoint(0xFFFFFFFFC0123450)
    t.resume()
    assert fake.bkpts == {} and fake.running
    fake.reach = None
    with pytest.raises(BreakpointTimeout):
        t.wait_stop(0.2)
    t.session.close()


def test_leaving_stopped_ends_gdb_without_detaching(tmp_path: Path) -> None:
    fake = BreakingGdb()
    t = target(fake, tmp_path)
    with t.halted():
        t.read_phys(0x5000, 4)
        t.leave_stopped()
    assert not fake.running and fake.mode == 0        # stopped, stub back in virtual mode
    assert not any("-target-detach" in c or "-gdb-exit" in c for c in fake.sent)
    assert fake.gdb_process.poll() is not None
    t.session.close()                                 # the run's clean-up: nothing more sent
    assert not any("-target-detach" in c for c in fake.sent)


MID = """\
name: mid
guest: {os: linux, image: linux-amd64}
steps:
  - boot: {}
  - workload:
      slots: [{gpa: 0x0, size: 64K}]
      touch: [{gpa: 0x2000, access: w}]
  - check: {during: w1, at: AT}
  - check: {vms: 0}
"""
DESTROY = 0xFFFFFFFFC0FFEE00


def mid_run(tmp_path: Path, at: str, world: FakeWorld) -> Any:
    p = tmp_path / "mid.yaml"
    p.write_text(MID.replace("AT", at))
    services = world.services(tmp_path)
    linux = replace(services.guests["linux"],
                    symbols=lambda *a: {"kvm_destroy_vm": DESTROY})
    guests = _one(services.guests, linux)
    return run_scenario(load_scenario(p), tmp_path / "art",
                        services=replace(services, guests=guests))


def listed_while_stopped(world: FakeWorld) -> None:
    """The world's VM stays on the list while L1 is stopped in the destroy path."""
    real = world.observe

    def observe(view: Any) -> Any:
        if not world.target.breakpoints:
            return real(view)
        # the release the guest's thread may be running right now must not be undone:
        # read the list as it was before it, without touching world.released
        return real(view, released=False)
    world.observe = observe          # type: ignore[method-assign]


def test_a_check_at_a_breakpoint_in_the_destroy_path_sees_an_intact_vm(
        tmp_path: Path) -> None:
    world = FakeWorld()
    world.target.reaches = [0xFFFFFFFF81000000, DESTROY]
    stops: list[int] = []
    world.target.on_stop = stops.append
    listed_while_stopped(world)
    res = mid_run(tmp_path, "{breakpoint: kvm_destroy_vm, hits: 1}", world)
    assert stops == [DESTROY]
    slat = json.loads((res.artifacts / "slat.json").read_text())
    mid = slat["checks"][0]
    assert mid["during"] == "w1" and mid["pc"] == f"{DESTROY:#x}"
    assert [v["state"] for v in mid["vms"]] == ["intact"] and mid["gone"] == []
    assert world.target.breakpoints == set() and world.target.running
    assert res.verdict == "pass", res.message


def test_a_half_destroyed_vm_over_freed_memory_is_a_finding(tmp_path: Path) -> None:
    world = FakeWorld()
    world.target.reaches = [DESTROY]
    listed_while_stopped(world)
    world.refcounts = {0x202000: 0}                  # the frame behind GPA 0x2000 was freed
    res = mid_run(tmp_path, "{breakpoint: kvm_destroy_vm}", world)
    assert res.verdict == "fail"
    assert [(f.kind, f.gpa) for f in res.findings] == [("freed_frame", 0x2000)]


def test_a_check_after_a_delay_finds_the_vm_cleanly_gone(tmp_path: Path) -> None:
    world = FakeWorld()
    res = mid_run(tmp_path, "{delay: 0.3}", world)
    mid = json.loads((res.artifacts / "slat.json").read_text())["checks"][0]
    assert mid["gone"] == ["w1/vm0"] and mid["vms"] == [] and mid["after_s"] >= 0.3
    assert res.verdict == "pass", res.message
