"""The machine contract: what runs an L1 guest, whatever the emulator.

A :class:`Machine` is a context manager that owns one emulator process: it
launches it from a :data:`BootSpec` (a kernel and initrd, or a disk), offers a
console endpoint and a debug :class:`~harness.target.Target`, saves and
restores its state, and on exit leaves nothing running.  Nothing above this
contract knows it is QEMU: warm starts (:mod:`harness.warm`) use only
:meth:`Machine.state_key`, :meth:`Machine.save_state` and
:attr:`MachineConfig.incoming`.

:class:`MachineConfig` is what a backend is built from: the scenario's machine
section resolved against the architecture, the boot spec and the artifact
directory.  A backend registers a :data:`MachineFactory` in
:data:`harness.machines.MACHINES`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol

from harness.arch import Arch
from harness.console import ConsoleEndpoint
from harness.target import Target

__all__ = ["KernelBoot", "DiskBoot", "CdromBoot", "BootSpec", "MachineConfig", "Machine",
           "MachineFactory"]


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: a kernel image, an initial ramdisk and a command line."""

    kernel: Path
    initrd: Path | None = None
    append: str = ""


@dataclass(frozen=True)
class DiskBoot:
    """Boot from a disk image (through the firmware), written to a throw-away overlay."""

    disk: Path
    format: str = "qcow2"             # "qcow2" or "raw"
    cdrom: Path | None = None         # an ISO attached as well (installers, ISOLINUX)
    network: tuple[str, ...] = ()     # extra emulator networking arguments (user net, tftp)
    writable: bool = False            # write the disk itself, no overlay (image builders only)


@dataclass(frozen=True)
class CdromBoot:
    """Boot a CD-ROM image through the firmware (an ISOLINUX ISO holding kernel and initrd).

    For emulators without direct kernel boot (Bochs); the command line is inside the ISO.
    """

    iso: Path


BootSpec = KernelBoot | DiskBoot | CdromBoot


@dataclass(frozen=True)
class MachineConfig:
    """Everything a backend needs to build its command line."""

    arch: Arch
    boot: BootSpec
    artifacts: Path                   # the run directory (command line, logs)
    cpu: str                          # resolved: the scenario's or the arch default
    memory: int = 1 << 30             # bytes
    smp: int = 1
    accel: str = "tcg"
    name: str = "l1"                  # label for socket and log names
    fault_log: bool = False           # record the emulator's own log of nested entries
    incoming: Path | None = None      # start from this saved state instead of booting
    extra_args: tuple[str, ...] = field(default=())


class Machine(Protocol):
    """One running emulator with an L1 guest."""

    config: MachineConfig

    def __enter__(self) -> Machine:
        """Launch; on failure everything started is stopped before raising."""
        ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Shut down: soft first, then hard, cleanup always."""
        ...

    def alive(self) -> bool:
        """True while the emulator runs."""
        ...

    @property
    def console(self) -> ConsoleEndpoint:
        """Where the L1 serial console is."""
        ...

    def open_target(self, log_dir: Path) -> AbstractContextManager[Target]:
        """A debug session on the L1 (logged under *log_dir*), closed on exit."""
        ...

    @property
    def fault_log(self) -> Path | None:
        """The emulator's own record of nested-paging events (QEMU's ``vmrun!``), or None."""
        ...

    def save_state(self, path: Path) -> None:
        """Write the whole machine state to *path* (L1 stopped meanwhile, then resumed)."""
        ...

    def state_key(self) -> dict[str, str] | None:
        """Everything that a saved state depends on besides the image (emulator, its
        version, the options of this config, the architecture), known before launch;
        None if this backend cannot save and restore (no warm starts)."""
        ...

    def describe(self) -> dict[str, str]:
        """Provenance: emulator binary, version, accelerator, CPU model."""
        ...


MachineFactory = Callable[[MachineConfig], Machine]
