"""Machine backends by emulator name: :data:`MACHINES` (``qemu``; ``bochs`` for Intel VMX).

>>> MACHINES.names()
['bochs', 'qemu']
"""

from __future__ import annotations

from harness.machines.base import (
    BootSpec,
    CdromBoot,
    DiskBoot,
    KernelBoot,
    Machine,
    MachineConfig,
    MachineFactory,
)
from harness.machines.bochs import BochsMachine
from harness.machines.qemu import QemuMachine
from harness.registry import Registry

__all__ = ["MACHINES", "Machine", "MachineConfig", "MachineFactory", "BootSpec", "KernelBoot",
           "DiskBoot", "CdromBoot", "QemuMachine", "BochsMachine"]

MACHINES: Registry[MachineFactory] = Registry("machine backend")
MACHINES.add("qemu", QemuMachine)
MACHINES.add("bochs", BochsMachine)
