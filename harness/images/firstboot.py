"""What every disk-image builder does around an image's first boot (the BSDs).

A disk image is customised once, at its first boot, by commands typed on the
serial console; files go in and out on a raw transfer disk holding a tar
archive.  This module holds the parts that do not depend on the OS:

* :func:`firstboot_machine`: QEMU on the image's own disk (written, no overlay:
  ``DiskBoot.writable``) with the transfer disk as the second virtio disk;
* :func:`run_commands`: the commands, each framed by the console, a failure an
  :class:`~harness.errors.InfraError` naming the command and its output;
* :func:`wait_exit`: QEMU gone after the guest powered off (``-no-reboot``);
* :func:`mirror_unreachable`: whether a mirror can be reached at all, so that a
  builder with nothing in its cache and no network ends in
  :class:`~harness.errors.SkipScenario`, not an error.

>>> from harness.images.recipe import IMAGES
>>> "freebsd-amd64" in IMAGES and "dragonfly-amd64" in IMAGES
True
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.arch import ARCHES
from harness.console import Console, GuestCommandError
from harness.errors import InfraError

__all__ = ["firstboot_machine", "run_commands", "wait_exit", "mirror_unreachable",
           "PROBE_TIMEOUT", "COMMAND_TIMEOUT"]

PROBE_TIMEOUT = 20.0            # seconds to decide that a mirror cannot be reached at all
COMMAND_TIMEOUT = 3600.0        # seconds for one first-boot command (cc under TCG)
_UNREACHABLE: dict[str, str] = {}   # server -> why it could not be reached, this process


def firstboot_machine(arch: str, cpu: str, memory: int, disk: Path, logs: Path, name: str,
                      transfer: Path | None = None, extra: Sequence[str] = (),
                      fmt: str = "qcow2") -> Any:
    """A QEMU machine (a context manager) booting *disk* itself, written in place.

    *transfer* is attached as the second virtio disk (raw); *extra* are further
    QEMU arguments (SeaBIOS's serial console: ``-machine graphics=off``).
    """
    from harness.machines.base import DiskBoot, MachineConfig
    from harness.machines.qemu import QemuMachine
    args = list(extra)
    if transfer is not None:
        args += ["-drive", f"file={transfer},format=raw,if=virtio"]
    config = MachineConfig(arch=ARCHES[arch], boot=DiskBoot(disk, fmt, writable=True),
                           artifacts=logs, cpu=cpu, memory=memory, name=name,
                           extra_args=tuple(args))
    return QemuMachine(config)


def run_commands(console: Console, commands: Sequence[str], what: str,
                 progress: Callable[[str], None], timeout: float = COMMAND_TIMEOUT
                 ) -> list[str]:
    """Run *commands* in order; their outputs.  A failing one is an InfraError."""
    outputs = []
    for cmd in commands:
        progress(f"{what}: {cmd}")
        try:
            outputs.append(console.run(cmd, timeout=timeout).output)
        except GuestCommandError as exc:
            raise InfraError(f"{what} failed: {exc}") from exc
    return outputs


def wait_exit(machine: Any, timeout: float, what: str) -> None:
    """Wait for QEMU to exit by itself (the guest powered off or rebooted)."""
    deadline = time.monotonic() + timeout
    while machine.alive():
        if time.monotonic() > deadline:
            raise InfraError(f"{what}: QEMU did not exit within {timeout:.0f} s")
        time.sleep(1)


def mirror_unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the server of *url* cannot be reached at all (no network), or None.

    Any HTTP answer, even an error, means the server is there: downloads
    report that themselves.  A verdict is remembered for the process.
    """
    server = "/".join(url.split("/", 3)[:3])
    if server in _UNREACHABLE:
        return _UNREACHABLE[server]
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"),
                                    timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        _UNREACHABLE[server] = f"{server} cannot be reached from here " \
                               f"({getattr(exc, 'reason', exc)})"
        return _UNREACHABLE[server]
