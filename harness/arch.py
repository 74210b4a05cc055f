"""The L1 architectures: one frozen record each, in the :data:`ARCHES` registry.

Everything that differs between x86-64 and arm64 L1 guests and is not a
page-table format lives here: the emulator binaries, the default machine and
CPU, the console device, gdb's name for the target, how to tell that a halted
CPU runs the kernel, and which workload options the architecture accepts.

>>> ARCHES["aarch64"].console
'ttyAMA0'
>>> ARCHES["x86_64"].in_kernel({"cs": 0x10})
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from harness.registry import Registry

__all__ = ["Arch", "ARCHES"]


def _x86_in_kernel(regs: Mapping[str, int]) -> bool:
    """CS.RPL == 0: ring 0."""
    return regs["cs"] & 3 == 0


def _arm64_in_kernel(regs: Mapping[str, int]) -> bool:
    """PSTATE.EL (bits 3:2 of CPSR) != 0: not EL0."""
    return (regs["cpsr"] >> 2) & 3 != 0


@dataclass(frozen=True)
class Arch:
    """What differs between the L1 architectures."""

    name: str                    # registry key, as `uname -m` of the L1 prints it
    qemu: str                    # QEMU system emulator binary
    machine: str                 # default -M value
    cpu: str                     # default -cpu value; a scenario may choose another
    console: str                 # the L1 kernel's console device (console=...)
    gdb: str                     # gdb binary that understands this target
    gdb_architecture: str        # argument of gdb's `set architecture`
    mode_registers: tuple[str, ...]              # registers in_kernel looks at
    in_kernel: Callable[[Mapping[str, int]], bool]  # halted CPU is in the kernel?
    l2_address_bits: int         # GPA bits the workload's L2 reaches by default
    workload_options: frozenset[str] = frozenset()  # arch-only workload keys (ipa_bits)


ARCHES: Registry[Arch] = Registry("architecture")
ARCHES.add("x86_64", Arch(
    name="x86_64", qemu="qemu-system-x86_64", machine="pc", cpu="max",
    console="ttyS0", gdb="gdb", gdb_architecture="i386:x86-64",
    mode_registers=("cs",), in_kernel=_x86_in_kernel,
    l2_address_bits=32))                 # the L2 runs 32-bit code with paging off
ARCHES.add("aarch64", Arch(
    name="aarch64", qemu="qemu-system-aarch64",
    machine="virt,virtualization=on,gic-version=3", cpu="max",
    console="ttyAMA0", gdb="gdb-multiarch", gdb_architecture="aarch64",
    mode_registers=("cpsr",), in_kernel=_arm64_in_kernel,
    l2_address_bits=40,                  # KVM's default IPA size; `ipa_bits` changes it
    workload_options=frozenset({"ipa_bits"})))
