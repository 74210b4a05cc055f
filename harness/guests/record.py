"""The :class:`GuestOS` record: everything the harness must know about an L1 OS."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from harness.console import ConsoleProfile
from harness.ktypes import KernelTypes
from harness.models.base import Backing

if TYPE_CHECKING:
    from harness.console import Console
    from harness.images import Image
    from harness.observe import KernelView

__all__ = ["GuestOS", "SymbolSource", "TypeSource", "BackingSource", "BackingQuery", "Login",
           "BootIdSource"]


@dataclass(frozen=True)
class BackingQuery:
    """What a backing source may use to find the L1 frames behind one VM's memory."""

    pid: int                                   # the VMM process in L1
    slots: tuple[tuple[int, int, int], ...]    # (gpa, size, hva) of each memory range
    reported: Mapping[int, int] = field(default_factory=dict)  # GPA page -> frame, as the
    #                                          VMM process read it (Linux: its pagemap)
    l1: KernelView | None = None               # the halted L1 (memories, symbols, types),
    #                                          for sources that walk the process's own tables

# console -> an id that differs every boot and survives a state save and restore
BootIdSource = Callable[["Console"], str]
# (console, image, symbol names, artifact directory) -> {name: address}, read while L1 runs
SymbolSource = Callable[["Console", "Image", Sequence[str], Path], Mapping[str, int]]
# (image, modules whose types go on top of the kernel's) -> the kernel's types
TypeSource = Callable[["Image", Sequence[str]], KernelTypes]
# a VM's VMM process and ranges -> the L1 pages backing its memory (independent of SLAT)
BackingSource = Callable[[BackingQuery], Backing]
# (console, image, seconds) -> a shell: log in on a getty (None: the console is a shell)
Login = Callable[["Console", "Image", float], None]


@dataclass(frozen=True)
class GuestOS:
    """One L1 operating system."""

    name: str                          # registry key: linux, openbsd, freebsd, dragonfly
    console: ConsoleProfile            # prompt and panic patterns
    boot: str                          # "kernel" (kernel + initrd) or "disk"
    image_builder: str                 # how its images are made ("" = no builder yet)
    symbols: SymbolSource | None = None  # where kernel symbols come from
    types: TypeSource | None = None      # where kernel types come from
    backing: BackingSource | None = None  # independent truth about backing frames
    boot_id: BootIdSource | None = None  # proves a restored state is the saved boot
    missing: str = ""                  # why it cannot be observed yet (when a source is None)
    login: Login | None = None         # how a shell is reached after boot (BSD getty)
    backing_symbols: tuple[str, ...] = ()  # kernel symbols the backing source reads

    @property
    def observable(self) -> bool:
        """Whether the harness can read this guest's hypervisor state."""
        return None not in (self.symbols, self.types, self.backing)


