"""The Target contract's helpers over the fake target: views, RAM limits, kernel mode."""

from __future__ import annotations

import pytest

from harness.arch import ARCHES
from harness.errors import InfraError, MemoryReadError
from harness.mem import DictMem
from harness.target import FakeTarget, PhysView, l1_memories, settle_in_kernel

X86 = ARCHES["x86_64"]
ARM = ARCHES["aarch64"]


def test_already_in_kernel_does_not_nudge() -> None:
    t = FakeTarget(DictMem(size=1 << 20), registers={"cs": 0x10})
    settle_in_kernel(t, X86.mode_registers, X86.in_kernel)
    assert t.nudges == 0


def test_user_mode_halts_are_nudged_until_the_kernel() -> None:
    t = FakeTarget(DictMem(size=1 << 20), registers={"cpsr": 0x0},        # EL0
                   after_nudge=[{"cpsr": 0x0}, {"cpsr": 0x0}, {"cpsr": 0x5}])  # then EL1
    settle_in_kernel(t, ARM.mode_registers, ARM.in_kernel)
    assert t.nudges == 3


def test_gives_up_with_a_reason() -> None:
    t = FakeTarget(DictMem(size=1 << 20), registers={"cs": 0x33})          # ring 3, forever
    with pytest.raises(InfraError, match="user mode at each of 5 halts"):
        settle_in_kernel(t, X86.mode_registers, X86.in_kernel, tries=5)
    assert t.nudges == 5


def test_physical_reads_outside_ram_raise_instead_of_reading_zeros() -> None:
    mem = DictMem(size=1 << 24)
    mem.write(0x1000, b"ram!")
    t = FakeTarget(mem, ram=[(0, 0x100000), (0x200000, 0x300000)])
    view = PhysView(t, t.ram_ranges())
    assert view.read(0x1000, 4) == b"ram!"
    with pytest.raises(MemoryReadError, match="outside the L1's RAM"):
        view.read(0x180000, 8)              # a hole: the gdbstub would read zeros
    with pytest.raises(MemoryReadError):
        view.read(0xFFFFC, 8)               # straddles the end of a range
    assert l1_memories(t, t.ram_ranges()).size == 0x300000


def test_virtual_reads_translate_page_by_page() -> None:
    mem = DictMem(size=1 << 20)
    mem.write(0x5FFC, b"ab")
    mem.write(0x9000, b"cd")
    t = FakeTarget(mem, virt={0xFFFF_8000_0000_0000: 0x5000, 0xFFFF_8000_0000_1000: 0x9000})
    assert t.read_virt(0xFFFF_8000_0000_0FFC, 6) == b"ab\0\0cd"
    assert t.translate(0xFFFF_8000_0000_1010) == 0x9010
    with pytest.raises(MemoryReadError, match="not mapped"):
        t.read_virt(0xFFFF_8000_0000_2000, 1)


def test_halted_blocks_nest_and_registers_are_exact() -> None:
    t = FakeTarget(DictMem(size=1 << 20), registers={"cr4": 0x1000, "cpu1:cr4": 0x3000})
    with t.halted():
        with t.halted():
            assert t.register("cr4") == 0x1000 and t.register("cr4", cpu=1) == 0x3000
    assert t.halts == 1 and t.running
    with pytest.raises(InfraError, match="cpu2:cr4"):
        t.register("cr4", cpu=2)
