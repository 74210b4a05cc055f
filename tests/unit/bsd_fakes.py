"""Scripted BSD guests for offline tests: a getty banner instead of the initramfs's shell,
a root shell after the login, and a power-off that ends the machine.

:class:`ScriptedMachine` is :class:`harness.machines.fake.FakeMachine` with the
boot the BSD images have: it greets with *banner* (``login: `` at the end for a
getty, or a loader dialogue), echoes what is typed, answers the harness's framed
commands through the :class:`~harness.machines.fake.FakeGuest` rules, and stops
(the console closes, ``alive()`` is False) when a typed line matches *halt*, as
QEMU exits when the guest powers off under ``-no-reboot``.  *dialogue* answers
plain typed lines (the loader's ``OK`` prompt, a single-user shell question)
before the shell.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness.arch import ARCHES
from harness.machines.base import MachineConfig
from harness.machines.fake import FakeGuest, FakeMachine
from harness.mem import DictMem
from harness.target import FakeTarget

FREEBSD_BANNER = ("\r\nFreeBSD/amd64 (freebsd) (ttyu0)\r\n\r\nlogin: ")


class ScriptedMachine(FakeMachine):
    """A fake machine whose guest boots to *banner*, logs in and powers off on *halt*."""

    def __init__(self, config: MachineConfig, guest: FakeGuest, target: FakeTarget,
                 banner: str, halt: str = r"^(?:shutdown -p now|poweroff|halt -p)$",
                 prompt: str = "# ", dialogue: Mapping[str, str] | None = None) -> None:
        super().__init__(config, guest, target)
        self.banner = banner
        self.halt = re.compile(halt)
        self.prompt = prompt
        self.dialogue = dict(dialogue or {})

    def _serve(self) -> None:
        assert self._server is not None
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.banner.encode())
            buf = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode(errors="replace").rstrip("\r")
                    if self.halt.search(text):
                        conn.sendall(f"{text}\r\nUptime: 1m2s\r\n".encode())
                        return
                    reply = self.dialogue.pop(text, None)
                    if reply is not None:
                        conn.sendall(f"{text}\r\n{reply}".encode())
                        continue
                    conn.sendall((text + "\r\n" + self.guest.reply(text)
                                  + self.prompt).encode())


def scripted_factory(guest: FakeGuest, banner: str, **kw: Any) -> Callable[..., ScriptedMachine]:
    """A stand-in for :func:`harness.images.firstboot.firstboot_machine`."""
    def make(arch: str, cpu: str, memory: int, disk: Path, logs: Path, name: str,
             transfer: Path | None = None, extra: Any = (), fmt: str = "qcow2"
             ) -> ScriptedMachine:
        config = MachineConfig(arch=ARCHES[arch], boot=_boot(disk), artifacts=logs, cpu=cpu,
                               memory=memory, name=name)
        return ScriptedMachine(config, guest, FakeTarget(DictMem(size=1 << 20)), banner, **kw)
    return make


def _boot(disk: Path) -> Any:
    from harness.machines.base import DiskBoot
    return DiskBoot(disk, writable=True)
