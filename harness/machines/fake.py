"""A machine that replays a scripted guest: the fake beside the Machine contract.

:class:`FakeMachine` serves a console on a unix socket in a private
directory: a thread plays the guest's side, answering the harness's probes and
marker-framed commands through :class:`FakeGuest` rules (a regex on the
command -> output and status).  Its debug target is a
:class:`~harness.target.FakeTarget` over a :class:`~harness.mem.DictMem` the
test prepared.  The runner, the steps and the check glue run on it unchanged,
with no emulator and no VM.

>>> guest = FakeGuest([Rule(r"^uname -r$", "6.1.0-fake\\n")])
>>> guest.answer("uname -r")
('6.1.0-fake\\n', 0)
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from harness.console import ConsoleEndpoint, UnixEndpoint
from harness.errors import InfraError
from harness.machines.base import MachineConfig
from harness.scratch import private_dir
from harness.target import FakeTarget, Target

__all__ = ["Rule", "FakeGuest", "FakeMachine", "fake_machine_factory"]

_PROBE = re.compile(r"^printf '%s%s\\n' @@R (\w+)@@$")
_FRAMED = re.compile(r"^printf '%s%s\\n' @@B (\w+)@@; (.*?)(?:; | )printf '\\n%s%s %d\\n' "
                     r"@@E (\w+)@@ \$\?$")

Answer = tuple[str, int] | Callable[["re.Match[str]"], tuple[str, int]]


@dataclass(frozen=True)
class Rule:
    """A command regex and what the guest answers: output text and status, or a function."""

    pattern: str
    output: str = ""
    status: int = 0
    answer: Callable[[re.Match[str]], tuple[str, int]] | None = None


@dataclass
class FakeGuest:
    """The guest's side of the console: rules tried in order; no match is status 127."""

    rules: Sequence[Rule]
    ready: str = "slatcheck-init: ready"
    typed: list[str] = field(default_factory=list)   # every command the harness ran
    untyped: list[str] = field(default_factory=list)  # lines sent without markers

    def answer(self, cmd: str) -> tuple[str, int]:
        """Output and status of *cmd* by the first matching rule."""
        self.typed.append(cmd)
        for rule in self.rules:
            m = re.search(rule.pattern, cmd)
            if m:
                return rule.answer(m) if rule.answer else (rule.output, rule.status)
        return f"sh: {cmd.split()[0] if cmd.split() else cmd}: not found\n", 127

    def reply(self, line: str) -> str:
        """What the guest prints for one typed *line* (probe, framed command, or a bare
        command, which runs too: its output and no markers)."""
        if m := _PROBE.match(line):
            return f"@@R{m.group(1)}@@\r\n"
        if m := _FRAMED.match(line):
            out, status = self.answer(m.group(2))
            out = out if out.endswith("\n") or not out else out + "\n"
            return (f"@@B{m.group(1)}@@\r\n{out.replace(chr(10), chr(13) + chr(10))}"
                    f"\r\n@@E{m.group(3)}@@ {status}\r\n")
        if line.strip():
            return self.bare(line.strip()).replace("\n", "\r\n")
        return ""

    def bare(self, cmd: str) -> str:
        """A command typed without markers (a release sent while L1 may stop): the first
        matching rule runs, its output is printed; recorded in :attr:`untyped`."""
        self.untyped.append(cmd)
        for rule in self.rules:
            m = re.search(rule.pattern, cmd)
            if m:
                return (rule.answer(m) if rule.answer else (rule.output, rule.status))[0]
        return ""


class FakeMachine:
    """Implements :class:`harness.machines.base.Machine` with a scripted guest."""

    def __init__(self, config: MachineConfig, guest: FakeGuest, target: FakeTarget) -> None:
        self.config = config
        self.guest = guest
        self._target = target
        self._dir: Path | None = None
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.saved: list[Path] = []

    def __enter__(self) -> FakeMachine:
        self._dir = private_dir("fake")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self._dir / "console.sock"))
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        (self.config.artifacts / "qemu.cmdline").write_text("fake machine\n")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _serve(self) -> None:
        """Accept the console, greet, then answer line by line until closed."""
        assert self._server is not None
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        with conn:
            conn.sendall(f"{self.guest.ready}\r\nslat# ".encode())
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
                    conn.sendall((text + "\r\n" + self.guest.reply(text) + "slat# ").encode())

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def console(self) -> ConsoleEndpoint:
        if self._dir is None:
            raise InfraError("fake machine not launched")
        return UnixEndpoint(self._dir / "console.sock")

    @contextlib.contextmanager
    def open_target(self, log_dir: Path) -> Iterator[Target]:
        yield self._target

    @property
    def fault_log(self) -> Path | None:
        return None

    def save_state(self, path: Path) -> None:
        path.write_bytes(b"fake machine state\n" + self.guest.ready.encode())
        self.saved.append(path)

    def state_key(self) -> dict[str, str] | None:
        """Warm starts replay the same script: the key is the config's options."""
        c = self.config
        return {"emulator": "fake", "cpu": c.cpu, "memory": str(c.memory), "arch": c.arch.name,
                "boot": repr(c.boot)}

    def describe(self) -> dict[str, str]:
        return {"emulator": "fake", "version": "0", "accel": self.config.accel,
                "cpu": self.config.cpu}

    # -- stop and keep (harness.replay.Keepable) --------------------------------

    def debug_socket(self) -> Path:
        """Where a debugger would attach (the fake has no stub: nothing listens)."""
        if self._dir is None:
            raise InfraError("fake machine not launched")
        return self._dir / "gdb.sock"

    def dump_core(self, path: Path) -> None:
        """The target's memory as an ELF core: one segment per run of written pages."""
        from harness.elfcore import EM_AARCH64, EM_X86_64, write_core
        mem = self._target.mem
        runs: list[tuple[int, bytearray]] = []
        for pfn in sorted(mem.pages):
            if runs and runs[-1][0] + len(runs[-1][1]) == pfn * 4096:
                runs[-1][1].extend(mem.pages[pfn])
            else:
                runs.append((pfn * 4096, bytearray(mem.pages[pfn])))
        write_core(path, [(a, bytes(b)) for a, b in runs],
                   machine=EM_AARCH64 if self.config.arch.name == "aarch64" else EM_X86_64)


def fake_machine_factory(guest: FakeGuest,
                         target: FakeTarget) -> Callable[[MachineConfig], FakeMachine]:
    """A machine factory (see :data:`harness.machines.MACHINES`) for one scripted guest."""
    return lambda config: FakeMachine(config, guest, target)
