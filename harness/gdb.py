"""A GDB/MI session on QEMU's gdbstub: L1 physical memory and registers.

:class:`GdbSession` runs gdb under pygdbmi with its output poll lowered from
pygdbmi's default 0.2 s (which adds about 200 ms to every command) to 0.5 ms,
attaches to the gdbstub's unix socket, and logs all MI traffic to
``gdb.log``.  Commands carry MI tokens and the session waits for the result
record with its own token, so replies are never mixed up.

gdb runs in all-stop mode with ``mi-async on``: the L1 keeps running between
inspections, and :meth:`GdbSession.halted` stops every CPU for the duration
of a block.  Memory and register reads halt the L1 on their own if it runs.

Physical reads switch the stub with ``maintenance packet
Qqemu.PhyMemMode:1`` and restore the previous mode afterwards (the mode is
global in the stub).  A failed or short read raises
:class:`~harness.errors.MemoryReadError`; it never returns fewer bytes.
Losing gdb or QEMU raises :class:`GdbError`.

Reads up to :data:`CHUNK` bytes use ``-data-read-memory-bytes`` (about
1.5 ms per small read); larger ones ``dump binary memory`` into a private
scratch file, measured about 5 times faster (8 MiB: 1.4 s against 7.2 s under
TCG).

QEMU's physical mode reads addresses where no RAM is as zeros, without an
error: read through :class:`harness.target.PhysView` with the machine's RAM
ranges so that such reads raise.  :class:`GdbTarget` is the session as a
:class:`harness.target.Target`.

>>> with GdbSession(m.gdb_path, out / "gdb.log", arch="x86_64") as gdb:
...     with gdb.halted():                              # doctest: +SKIP
...         cr3 = gdb.register("cr3")
...         page = gdb.read_phys(cr3 & ~0xfff, 4096)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from pygdbmi.gdbcontroller import GdbController

from harness.arch import ARCHES, Arch
from harness.errors import InfraError, MemoryReadError
from harness.scratch import private_dir

__all__ = ["GdbError", "GdbSession", "GdbTarget", "CHUNK", "POLL_SECONDS"]

CHUNK = 0x10000          # bytes per -data-read-memory-bytes / write command; above: dump
POLL_SECONDS = 0.0005    # pygdbmi's time_to_check_for_additional_output_sec
_REGISTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class GdbError(InfraError):
    """gdb or the gdbstub is gone or refused a command that must work."""


class MiController(Protocol):
    """The part of pygdbmi's GdbController the session uses (fakes implement it)."""

    gdb_process: Any

    def write(self, mi_cmd_to_write: str, timeout_sec: float = ...,
              raise_error_on_timeout: bool = ...,
              read_response: bool = ...) -> list[dict[str, Any]]:
        """Send one MI command line."""
        ...

    def get_gdb_response(self, timeout_sec: float = ...,
                         raise_error_on_timeout: bool = ...) -> list[dict[str, Any]]:
        """Parsed MI records that arrived within *timeout_sec*."""
        ...


def _spawn_gdb(gdb: str) -> MiController:
    """Start gdb in MI mode with a short output poll."""
    return GdbController([gdb, "--nx", "--quiet", "--interpreter=mi3"],
                         time_to_check_for_additional_output_sec=POLL_SECONDS)


class GdbSession:
    """One gdb attached to one QEMU gdbstub over a unix socket.

    *sock_path* is :attr:`harness.machines.qemu.QemuMachine.gdb_path`; *log_path*
    receives the MI traffic; *arch* is an :class:`~harness.arch.Arch` or its
    :data:`~harness.arch.ARCHES` name.  With
    *resume* (the default) the L1 runs again after attaching (QEMU pauses it
    when a debugger connects).
    """

    def __init__(self, sock_path: Path | str, log_path: Path | str, *,
                 arch: Arch | str = "x86_64",
                 timeout: float = 30.0, resume: bool = True,
                 spawn: Callable[[str], MiController] = _spawn_gdb) -> None:
        self.sock_path = Path(sock_path)
        self.arch = ARCHES[arch] if isinstance(arch, str) else arch
        self.timeout = timeout
        self.resume = resume
        self._spawn = spawn
        self._log: IO[str] = open(log_path, "a", encoding="utf-8")
        self._ctl: MiController | None = None
        self._tokens = itertools.count(1)
        self._t0 = time.monotonic()
        self.running = False
        self._mode: int | None = None   # the stub's PhyMemMode as last set or read
        self._scratch: Path | None = None  # private directory for `dump binary memory`

    # -- life cycle -------------------------------------------------------------

    def __enter__(self) -> GdbSession:
        try:
            self.attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def attach(self) -> None:
        """Start gdb, set the architecture, connect, and (with *resume*) continue."""
        try:
            self._ctl = self._spawn(self.arch.gdb)
        except (OSError, ValueError) as exc:
            raise GdbError(f"cannot start {self.arch.gdb}: {exc}") from exc
        self._scratch = private_dir("gdb")
        for cmd in ("-gdb-set mi-async on", "-gdb-set pagination off",
                    "-gdb-set confirm off", "-gdb-set code-cache off",
                    "-gdb-set stack-cache off",
                    f"-gdb-set architecture {self.arch.gdb_architecture}"):
            self.mi(cmd)
        self.mi(f"-target-select remote {self.sock_path}")
        self.running = False   # QEMU stops the L1 when a debugger connects
        if self.resume:
            self.cont()

    def close(self) -> None:
        """Detach (QEMU resumes the L1), then end gdb; the process dies in ``finally``."""
        ctl, self._ctl = self._ctl, None
        try:
            if ctl is not None and _alive(ctl):
                self._ctl = ctl
                with contextlib.suppress(InfraError):
                    self.interrupt()   # gdb refuses to detach from a running target
                    self._restore_mode()
                    self.mi("-target-detach", timeout=5.0)
                with contextlib.suppress(InfraError):
                    self.mi("-gdb-exit", timeout=2.0, expect_result=False)
        finally:
            self._ctl = None
            if ctl is not None:
                _reap(ctl.gdb_process)
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
            with contextlib.suppress(OSError):   # a full disk cannot take the last lines
                self._log.close()

    def _restore_mode(self) -> None:
        """Leave the stub in virtual mode, as QEMU starts it."""
        if self._mode == 1:
            self._set_mode(0)

    # -- MI plumbing ------------------------------------------------------------

    def _note(self, direction: str, payload: object) -> None:
        """One line of gdb.log: time, direction, record."""
        stamp = f"{time.monotonic() - self._t0:10.4f}"
        try:
            self._log.write(f"{stamp} {direction} {json.dumps(payload, default=str)}\n")
            self._log.flush()
        except OSError as e:
            raise GdbError(f"cannot write gdb.log: {e.strerror or e}") from None

    def mi(self, cmd: str, timeout: float | None = None,
           expect_result: bool = True) -> list[dict[str, Any]]:
        """Send one MI command; return every record up to its result record.

        ``^error`` raises :class:`GdbError` with gdb's message; a lost gdb or
        no answer within *timeout* too.
        """
        ctl = self._require()
        token = next(self._tokens)
        self._note(">", f"{token}{cmd}")
        try:
            ctl.write(f"{token}{cmd}", read_response=False)
        except (OSError, ValueError) as exc:
            raise GdbError(f"gdb is gone (write failed: {exc})") from exc
        if not expect_result:
            return []
        records = self._collect(token, self.timeout if timeout is None else timeout, cmd)
        result = records[-1]
        if result.get("message") == "error":
            msg = (result.get("payload") or {}).get("msg", "")
            raise GdbError(f"gdb: {cmd}: {msg}")
        return records

    def _collect(self, token: int, timeout: float, cmd: str) -> list[dict[str, Any]]:
        """Read records until the result record carrying *token*."""
        ctl = self._require()
        deadline = time.monotonic() + timeout
        records: list[dict[str, Any]] = []
        while True:
            for rec in self._read(ctl, min(0.5, max(0.0, deadline - time.monotonic()))):
                records.append(rec)
                if rec.get("type") == "result" and rec.get("token") == token:
                    return records
            if not _alive(ctl):
                raise GdbError(f"gdb exited while waiting for {cmd!r}")
            if time.monotonic() > deadline:
                raise GdbError(f"gdb: no answer to {cmd!r} within {timeout:g} s")

    def _read(self, ctl: MiController, wait: float) -> list[dict[str, Any]]:
        """Records that arrived; tracks the running state from ``*running``/``*stopped``."""
        recs = ctl.get_gdb_response(timeout_sec=wait, raise_error_on_timeout=False)
        for rec in recs:
            self._note("<", {k: v for k, v in rec.items() if k != "stream"})
            self._track(rec)
        return recs

    def _track(self, rec: dict[str, Any]) -> None:
        """Update :attr:`running` from one record; a lost remote raises."""
        if rec.get("type") == "notify" and rec.get("message") == "running":
            self.running = True
        elif rec.get("type") == "notify" and rec.get("message") == "stopped":
            self.running = False
        elif rec.get("type") == "result" and rec.get("message") == "running":
            self.running = True
        text = str(rec.get("payload") or "")
        if "Remote connection closed" in text or "Remote communication error" in text:
            raise GdbError(f"lost the gdbstub (QEMU gone?): {text.strip()}")

    def _require(self) -> MiController:
        """The live controller, or GdbError."""
        if self._ctl is None:
            raise GdbError("gdb session is not attached")
        return self._ctl

    def _wait_stopped(self, timeout: float) -> None:
        """Wait for the ``*stopped`` record after an interrupt."""
        ctl = self._require()
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > deadline:
                raise GdbError(f"L1 did not stop within {timeout:g} s")
            self._read(ctl, 0.1)
            if not _alive(ctl):
                raise GdbError("gdb exited while stopping the L1")

    # -- run control ------------------------------------------------------------

    def interrupt(self) -> None:
        """Stop every L1 CPU (all-stop) and wait until gdb reports it."""
        if self.running:
            self.mi("-exec-interrupt")
            self._wait_stopped(self.timeout)

    def cont(self) -> None:
        """Let the L1 run again."""
        if not self.running:
            self.mi("-exec-continue")
            self.running = True

    @contextlib.contextmanager
    def halted(self) -> Iterator[None]:
        """Stop all CPUs for the block, then continue; if stopped on entry, stay stopped."""
        if not self.running:
            yield
            return
        self.interrupt()
        try:
            yield
        finally:
            if self._ctl is not None and _alive(self._ctl):
                self.cont()

    # -- physical-memory mode ---------------------------------------------------

    def _console(self, command: str) -> list[str]:
        """Run a CLI command; return its console-stream text lines."""
        recs = self.mi(f'-interpreter-exec console "{command}"')
        return [str(r.get("payload")) for r in recs
                if r.get("type") == "console" and r.get("payload")]

    def _query_mode(self) -> int:
        """The stub's current PhyMemMode (``qqemu.PhyMemMode``)."""
        for line in self._console("maintenance packet qqemu.PhyMemMode"):
            m = re.search(r'received: "([01])"', line)
            if m:
                return int(m.group(1))
        raise GdbError("the gdbstub does not answer qqemu.PhyMemMode (QEMU < 5.0?)")

    def _set_mode(self, mode: int) -> None:
        """Switch the stub's PhyMemMode; insists on ``OK``."""
        lines = self._console(f"maintenance packet Qqemu.PhyMemMode:{mode}")
        if not any('received: "OK"' in ln for ln in lines):
            raise GdbError(f"the gdbstub refused Qqemu.PhyMemMode:{mode}: {lines}")
        self._mode = mode

    @contextlib.contextmanager
    def memory_mode(self, physical: bool) -> Iterator[None]:
        """Physical (or virtual) addressing for the block; the previous mode comes back.

        Hold it around many reads to save the two switches per read.
        """
        want = 1 if physical else 0
        if self._mode is None:
            self._mode = self._query_mode()
        previous = self._mode
        if previous != want:
            self._set_mode(want)
        try:
            yield
        finally:
            if previous != want and self._ctl is not None and _alive(self._ctl):
                self._set_mode(previous)

    # -- memory -----------------------------------------------------------------

    def _read_chunk(self, addr: int, size: int) -> bytes:
        """One ``-data-read-memory-bytes``; exactly *size* bytes or MemoryReadError."""
        try:
            recs = self.mi(f"-data-read-memory-bytes {addr:#x} {size}")
        except GdbError as exc:
            if self._ctl is None or not _alive(self._ctl):
                raise
            raise MemoryReadError(addr, size, str(exc)) from exc
        blocks = (recs[-1].get("payload") or {}).get("memory") or []
        data = b"".join(bytes.fromhex(b.get("contents", "")) for b in blocks)
        if len(blocks) != 1 or int(blocks[0].get("begin", "-1"), 16) != addr \
                or len(data) != size:
            raise MemoryReadError(addr, size, f"short read: {len(data)} bytes in "
                                  f"{len(blocks)} block(s)")
        return data

    def _read_dump(self, addr: int, size: int) -> bytes:
        """``dump binary memory`` to the scratch file; exactly *size* bytes."""
        assert self._scratch is not None
        path = self._scratch / "dump.bin"
        path.unlink(missing_ok=True)
        try:
            self._console(f"dump binary memory {path} {addr:#x} {addr + size:#x}")
            data = path.read_bytes()
        except (GdbError, OSError) as exc:
            if self._ctl is None or not _alive(self._ctl):
                raise
            raise MemoryReadError(addr, size, str(exc)) from exc
        finally:
            path.unlink(missing_ok=True)
        if len(data) != size:
            raise MemoryReadError(addr, size, f"short dump: {len(data)} bytes")
        return data

    def read_memory(self, addr: int, size: int) -> bytes:
        """Read *size* bytes in the current mode (large reads through a dump file)."""
        if size < 0 or addr < 0:
            raise MemoryReadError(addr, size, "negative address or size")
        if size == 0:
            return b""
        with self.halted():
            if size > CHUNK:
                return self._read_dump(addr, size)
            return self._read_chunk(addr, size)

    def read_phys(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes of L1 physical memory at *addr*."""
        with self.halted(), self.memory_mode(physical=True):
            return self.read_memory(addr, size)

    def read_virt(self, addr: int, size: int) -> bytes:
        """*size* bytes at L1 virtual *addr*, translated by the current CPU's tables."""
        with self.halted(), self.memory_mode(physical=False):
            return self.read_memory(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        """Write *data* to L1 physical memory at *addr* (fault injection)."""
        with self.halted(), self.memory_mode(physical=True):
            for pos in range(0, len(data), CHUNK):
                piece = data[pos:pos + CHUNK]
                try:
                    self.mi(f"-data-write-memory-bytes {addr + pos:#x} {piece.hex()}")
                except GdbError as exc:
                    raise MemoryReadError(addr + pos, len(piece), f"write: {exc}") from exc

    # -- registers --------------------------------------------------------------

    def register(self, name: str, cpu: int | None = None) -> int:
        """Value of register *name* (``cr3``, ``cr4``, ``VTTBR_EL2``) as an unsigned int.

        *cpu* is the 0-based L1 CPU (gdb thread ``cpu + 1``); None: the current one.
        """
        if not _REGISTER_NAME.match(name):
            raise ValueError(f"bad register name {name!r}")
        thread = "" if cpu is None else f"--thread {cpu + 1} "
        with self.halted():
            recs = self.mi(f'-data-evaluate-expression {thread}"(unsigned long)${name}"')
        value = str((recs[-1].get("payload") or {}).get("value", ""))
        if not re.fullmatch(r"\d+", value):
            raise GdbError(f"register {name}: gdb answered {value!r}")
        return int(value)


def _alive(ctl: MiController) -> bool:
    """True while the gdb process runs."""
    proc = getattr(ctl, "gdb_process", None)
    return proc is not None and proc.poll() is None


def _reap(proc: Any) -> None:
    """End gdb: wait briefly for ``-gdb-exit``, then SIGTERM, then SIGKILL."""
    if proc is None:
        return
    for stop in (None, proc.terminate, proc.kill):
        if stop is not None and proc.poll() is None:
            stop()
        try:
            proc.wait(timeout=2.0)
            return
        except subprocess.TimeoutExpired:
            continue


class GdbTarget:
    """:class:`harness.target.Target` over a :class:`GdbSession` on QEMU's gdbstub.

    *ram_ranges* and *translate* come from the machine (QMP): the gdbstub knows
    neither.
    """

    def __init__(self, session: GdbSession, *,
                 ram_ranges: Callable[[], list[tuple[int, int]]],
                 translate: Callable[[int], int]) -> None:
        self.session = session
        self._ram_ranges = ram_ranges
        self._translate = translate

    def halted(self) -> contextlib.AbstractContextManager[None]:
        """All L1 CPUs stopped for the block."""
        return self.session.halted()

    def read_phys(self, addr: int, size: int) -> bytes:
        """Exactly *size* bytes of L1 physical memory."""
        return self.session.read_phys(addr, size)

    def read_virt(self, addr: int, size: int) -> bytes:
        """*size* bytes at L1 virtual *addr* (current CPU's tables)."""
        return self.session.read_virt(addr, size)

    def write_phys(self, addr: int, data: bytes) -> None:
        """Write L1 physical memory."""
        self.session.write_phys(addr, data)

    def register(self, name: str, cpu: int | None = None) -> int:
        """A register of L1 CPU *cpu* (None: the current one)."""
        return self.session.register(name, cpu)

    def ram_ranges(self) -> list[tuple[int, int]]:
        """From the machine (QEMU's memory tree)."""
        return self._ram_ranges()

    def translate(self, va: int) -> int:
        """From the machine (QEMU's gva2gpa)."""
        return self._translate(va)

    def nudge(self) -> None:
        """Let the L1 run for 2 ms and stop it again."""
        self.session.cont()
        time.sleep(0.002)
        self.session.interrupt()
