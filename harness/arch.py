"""The L1 architectures: one frozen record each, in the :data:`ARCHES` registry.

Everything that differs between x86-64 and arm64 L1 guests and is not a
page-table format lives here: the emulator binaries, the default machine and
CPU, the console device, gdb's name for the target, how to tell that a halted
CPU runs the kernel, and which workload options the architecture accepts.

>>> ARCHES["aarch64"].console
'ttyAMA0'
>>> ARCHES["x86_64"].in_kernel({"cs": 0x10})
True
>>> ARCHES["x86_64"].l2_address_bits("max", "tcg", None)    # QEMU's TCG: 40 physical bits
40
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from harness.registry import Registry

__all__ = ["Arch", "ARCHES", "TCG_PHYS_BITS", "ARM64_IPA_BITS"]


def _x86_in_kernel(regs: Mapping[str, int]) -> bool:
    """CS.RPL == 0: ring 0."""
    return regs["cs"] & 3 == 0


def _arm64_in_kernel(regs: Mapping[str, int]) -> bool:
    """PSTATE.EL (bits 3:2 of CPSR) != 0: not EL0."""
    return (regs["cpsr"] >> 2) & 3 != 0


TCG_PHYS_BITS = 40          # QEMU's TCG x86 CPUs without phys-bits= (TCG_PHYS_ADDR_BITS)
ARM64_IPA_BITS = 40         # KVM's default IPA size on arm64 (KVM_VM_TYPE_ARM_IPA_SIZE)


def _x86_cpu(cpu: str) -> tuple[str, set[str], dict[str, str]]:
    """QEMU ``-cpu`` text as (model, +/- flags, key=value properties)."""
    model, *props = cpu.split(",")
    flags = {p for p in props if p[:1] in "+-"}
    values = dict(p.split("=", 1) for p in props if "=" in p)
    return model, flags, values


def x86_phys_bits(cpu: str, accel: str) -> int:
    """The L1's MAXPHYADDR under QEMU: ``phys-bits=`` of ``-cpu``, else 40 under TCG
    (``TCG_PHYS_ADDR_BITS``) and 52 (assumed) under KVM, where the host decides.

    >>> x86_phys_bits("EPYC", "tcg"), x86_phys_bits("max,phys-bits=46", "tcg")
    (40, 46)
    >>> x86_phys_bits("max,phys-bits=52m", "tcg")
    Traceback (most recent call last):
    ...
    ValueError: phys-bits must be a whole number from 32 to 52, not '52m'
    """
    text = _x86_cpu(cpu)[2].get("phys-bits")
    if text is None:
        return 52 if accel == "kvm" else TCG_PHYS_BITS
    if not (text.isdigit() and 32 <= int(text) <= 52):
        raise ValueError(f"phys-bits must be a whole number from 32 to 52, not {text!r}")
    return int(text)


def _x86_l2_bits(cpu: str, accel: str, ipa_bits: int | None) -> int:
    """GPA bits the workload's x86 L2 reaches: the L1's MAXPHYADDR, 48 on a 4-level NPT.

    The L2 runs in long mode with its own page tables (``images/workload/l2_x86.c``),
    so it reaches every GPA KVM accepts: KVM gives it the L1's MAXPHYADDR
    (``KVM_GET_SUPPORTED_CPUID`` leaf 0x80000008 with TDP) and refuses memslots
    beyond it (``kvm_mmu_max_gfn()``).  QEMU's TCG gives the L1 ``phys-bits``
    (default 40); a 4-level NPT (an L1 without LA57: ``-la57``, or a model other
    than ``max``/``host``) maps at most 48 bits.  Under KVM acceleration the host
    decides: 52 bits are assumed.

    >>> _x86_l2_bits("max,-la57", "tcg", None), _x86_l2_bits("max,phys-bits=52", "tcg", None)
    (40, 52)
    >>> _x86_l2_bits("EPYC,phys-bits=52", "tcg", None)
    48
    """
    return min(x86_phys_bits(cpu, accel), 52 if x86_la57(cpu) else 48)


def x86_la57(cpu: str) -> bool:
    """Whether QEMU's x86 CPU *cpu* has LA57 (5-level paging): ``max``/``host`` unless
    ``-la57``, any model with ``+la57`` or ``la57=on``.

    >>> x86_la57("max"), x86_la57("max,-la57"), x86_la57("EPYC,+la57"), x86_la57("EPYC")
    (True, False, True, False)
    """
    model, flags, values = _x86_cpu(cpu)
    return ("-la57" not in flags and values.get("la57") != "off"
            and (model in ("max", "host") or "+la57" in flags or values.get("la57") == "on"))


def _arm64_l2_bits(cpu: str, accel: str, ipa_bits: int | None) -> int:
    """The VM's IPA size: the L2 runs with its MMU off, so it reaches every IPA below it."""
    return ARM64_IPA_BITS if ipa_bits is None else ipa_bits


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
    # (cpu, accel, ipa_bits) -> GPA bits the workload's L2 reaches on that machine
    l2_address_bits: Callable[[str, str, int | None], int]
    workload_options: frozenset[str] = frozenset()  # arch-only workload keys (ipa_bits)


ARCHES: Registry[Arch] = Registry("architecture")
ARCHES.add("x86_64", Arch(
    name="x86_64", qemu="qemu-system-x86_64", machine="pc", cpu="max",
    console="ttyS0", gdb="gdb", gdb_architecture="i386:x86-64",
    mode_registers=("cs",), in_kernel=_x86_in_kernel,
    l2_address_bits=_x86_l2_bits))
ARCHES.add("aarch64", Arch(
    name="aarch64", qemu="qemu-system-aarch64",
    machine="virt,virtualization=on,gic-version=3", cpu="max",
    console="ttyAMA0", gdb="gdb-multiarch", gdb_architecture="aarch64",
    mode_registers=("cpsr",), in_kernel=_arm64_in_kernel,
    l2_address_bits=_arm64_l2_bits,
    workload_options=frozenset({"ipa_bits"})))
