"""Machine backends by emulator name: :data:`MACHINES` (``qemu`` today).

>>> MACHINES.names()
['qemu']
"""

from __future__ import annotations

from harness.machines.base import (
    BootSpec,
    DiskBoot,
    KernelBoot,
    Machine,
    MachineConfig,
    MachineFactory,
)
from harness.machines.qemu import QemuMachine
from harness.registry import Registry

__all__ = ["MACHINES", "Machine", "MachineConfig", "MachineFactory", "BootSpec", "KernelBoot",
           "DiskBoot", "QemuMachine"]

MACHINES: Registry[MachineFactory] = Registry("machine backend")
MACHINES.add("qemu", QemuMachine)
