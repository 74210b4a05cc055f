"""One QEMU process: the L0 machine that runs the L1 hypervisor guest.

:class:`Machine` is a context manager in the manner of QEMU's own
``python/qemu/machine/machine.py``: it builds the command line from small
overridable hooks, launches QEMU with its console, QMP monitor and gdbstub on
unix sockets in a private 0700 directory (nothing listens on TCP), and on exit
asks QMP to ``quit``, then sends SIGTERM, then SIGKILL, each with a bounded
wait.  Cleanup runs in ``finally``, whatever the exception.

QMP goes through the asynchronous ``qemu.qmp.QMPClient`` driven by a private
event loop owned by the machine.  The legacy synchronous shim
(``qemu.qmp.legacy.QEMUMonitorProtocol``) would create and install a
process-wide event loop as a side effect; a private loop keeps the machine
independent of whatever else uses asyncio in the same process.

>>> with Machine(arch="x86_64", kernel=k, initrd=i, append="console=ttyS0",
...              artifacts=Path("out")) as m:          # doctest: +SKIP
...     m.qmp_command("query-status")["status"]
'running'
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from qemu.qmp import QMPClient

from harness.errors import InfraError
from harness.registry import Registry

__all__ = [
    "Arch",
    "ARCHES",
    "Machine",
    "QemuLaunchError",
    "kvm_usable",
    "parse_ram_ranges",
]

T = TypeVar("T")

PR_SET_PDEATHSIG = 1
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


@dataclass(frozen=True)
class Arch:
    """What differs between the L0 architectures QEMU emulates."""

    name: str              # registry key, as in `uname -m` of the L1
    qemu: str              # QEMU system emulator binary
    machine: str           # default -M value
    cpu: str               # default -cpu value; a scenario may choose another
    console: str           # the L1 kernel's console device (console=...)
    gdb: str               # gdb binary that understands this target
    gdb_architecture: str  # argument of gdb's `set architecture`


ARCHES: Registry[Arch] = Registry("architecture")
ARCHES.add("x86_64", Arch(
    name="x86_64", qemu="qemu-system-x86_64", machine="pc", cpu="max",
    console="ttyS0", gdb="gdb", gdb_architecture="i386:x86-64"))
ARCHES.add("aarch64", Arch(
    name="aarch64", qemu="qemu-system-aarch64",
    machine="virt,virtualization=on,gic-version=3", cpu="max",
    console="ttyAMA0", gdb="gdb-multiarch", gdb_architecture="aarch64"))


class QemuLaunchError(InfraError):
    """QEMU did not come up; carries its command line and the tail of its output."""

    def __init__(self, reason: str, cmdline: list[str], output_tail: str = "") -> None:
        self.reason = reason
        self.cmdline = cmdline
        self.output_tail = output_tail
        msg = f"QEMU launch failed: {reason}\ncommand: {shlex.join(cmdline)}"
        if output_tail:
            msg += f"\nQEMU output (tail):\n{output_tail}"
        super().__init__(msg)


def kvm_usable(path: str = "/dev/kvm") -> bool:
    """True if *path* opens read-write and answers KVM_GET_API_VERSION with 12.

    This cannot tell a PVM-only /dev/kvm from a real one: a stock guest may
    still hang there (see docs); TCG is the default for that reason.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


_MTREE_RAM = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ram\)")


def parse_ram_ranges(mtree: str) -> list[tuple[int, int]]:
    """RAM ``(start, end)`` ranges (end exclusive, adjacent ones merged) of the
    flat view of address space "memory" in HMP ``info mtree -f`` output.

    >>> parse_ram_ranges('FlatView #0\\n AS "memory", root: system\\n'
    ...     '  0000000040000000-000000007fffffff (prio 0, ram): mach-virt.ram\\n')
    [(1073741824, 2147483648)]
    """
    for view in mtree.split("FlatView #")[1:]:
        if ' AS "memory",' not in view:
            continue
        ranges: list[tuple[int, int]] = []
        for line in view.splitlines():
            m = _MTREE_RAM.match(line)
            if not m:
                continue
            lo, hi = int(m.group(1), 16), int(m.group(2), 16) + 1
            if ranges and ranges[-1][1] == lo:
                lo = ranges.pop()[0]
            ranges.append((lo, hi))
        return ranges
    raise InfraError('no flat view of address space "memory" in info mtree output')


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL QEMU when the launching thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _tail(path: Path, lines: int = 20) -> str:
    """The last *lines* lines of a text file, or "" if it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Machine:
    """Owns one QEMU process and its console, QMP and gdbstub sockets.

    Keyword arguments: *arch* (an :data:`ARCHES` name), *kernel*, *initrd*,
    *append*, *memory*, *smp*, *accel* (``tcg`` or ``kvm``), *cpu* (None: the
    arch default), *machine* (None: the arch default), *extra_args*,
    *artifacts* (directory for ``qemu.cmdline``, ``qemu.stderr`` and, with
    *vmrun_log*, ``qemu.log``), *vmrun_log* and *name*.
    """

    launch_timeout = 15.0   # seconds for the sockets to appear and QMP to greet
    qmp_timeout = 30.0      # seconds for one QMP command

    def __init__(self, *, arch: str = "x86_64", kernel: Path | str | None = None,
                 initrd: Path | str | None = None, append: str = "",
                 memory: str = "1G", smp: int = 1, accel: str = "tcg",
                 cpu: str | None = None, machine: str | None = None,
                 extra_args: list[str] | None = None,
                 artifacts: Path | str | None = None, vmrun_log: bool = False,
                 name: str = "l1") -> None:
        self.arch = ARCHES[arch]
        self.kernel = Path(kernel) if kernel is not None else None
        self.initrd = Path(initrd) if initrd is not None else None
        self.append = append
        self.memory = memory
        self.smp = smp
        self.accel = accel
        self.cpu = cpu or self.arch.cpu
        self.machine = machine or self.arch.machine
        self.extra_args = list(extra_args or [])
        self.artifacts = Path(artifacts) if artifacts is not None else Path.cwd()
        self.vmrun_log = vmrun_log
        self.name = name
        self._sockdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qmp: QMPClient | None = None
        self._cmdline: list[str] = []
        self.exitcode: int | None = None

    # -- paths and state ----------------------------------------------------

    def _sock(self, what: str) -> Path:
        """Path of one unix socket in the private directory."""
        if self._sockdir is None:
            raise InfraError(f"machine {self.name!r} is not launched")
        return self._sockdir / what

    @property
    def console_path(self) -> Path:
        """Unix socket of the L1 serial console (ttyS0 / ttyAMA0)."""
        return self._sock("console.sock")

    @property
    def qmp_path(self) -> Path:
        """Unix socket of the QMP monitor."""
        return self._sock("qmp.sock")

    @property
    def gdb_path(self) -> Path:
        """Unix socket of the gdbstub (`target remote <path>`)."""
        return self._sock("gdb.sock")

    @property
    def pid(self) -> int | None:
        """QEMU's process id, or None before launch."""
        return self._proc.pid if self._proc is not None else None

    @property
    def cmdline(self) -> list[str]:
        """The full QEMU command line (built on launch)."""
        return list(self._cmdline)

    @property
    def qemu_log_path(self) -> Path:
        """Where ``-D`` writes (only with *vmrun_log*)."""
        return self.artifacts / "qemu.log"

    def alive(self) -> bool:
        """True while the QEMU process runs."""
        return self._proc is not None and self._proc.poll() is None

    # -- command line hooks ---------------------------------------------------

    def _base_args(self) -> list[str]:
        """Arguments every machine gets: no graphics, no defaults, no TCP."""
        return ["-M", self.machine, "-cpu", self.cpu, "-accel", self.accel,
                "-m", self.memory, "-smp", str(self.smp),
                "-display", "none", "-nodefaults", "-no-reboot"]

    def _socket_args(self) -> list[str]:
        """Console, QMP and gdbstub, each on a unix socket server."""
        def chardev(cid: str, path: Path) -> list[str]:
            return ["-chardev", f"socket,id={cid},path={path},server=on,wait=off"]
        return [*chardev("con0", self.console_path), "-serial", "chardev:con0",
                *chardev("qmp0", self.qmp_path), "-mon", "chardev=qmp0,mode=control",
                *chardev("gdb0", self.gdb_path), "-gdb", "chardev:gdb0"]

    def _boot_args(self) -> list[str]:
        """Direct kernel boot arguments."""
        args: list[str] = []
        if self.kernel is not None:
            args += ["-kernel", str(self.kernel)]
        if self.initrd is not None:
            args += ["-initrd", str(self.initrd)]
        if self.append:
            args += ["-append", self.append]
        return args

    def _log_args(self) -> list[str]:
        """``-d in_asm -dfilter 0x0+0x1`` leaves only SVM's ``vmrun!`` lines."""
        if not self.vmrun_log:
            return []
        return ["-d", "in_asm", "-dfilter", "0x0+0x1", "-D", str(self.qemu_log_path)]

    def build_cmdline(self) -> list[str]:
        """The complete command line; needs the socket directory."""
        return [self.arch.qemu, *self._base_args(), *self._socket_args(),
                *self._boot_args(), *self._log_args(), *self.extra_args]

    # -- launch ---------------------------------------------------------------

    def _check_accel(self) -> None:
        """Refuse an accelerator this host cannot give."""
        if self.accel == "kvm" and not kvm_usable():
            raise InfraError("accel 'kvm' requested but /dev/kvm is missing or not "
                             "usable on this host; use accel 'tcg'")
        if shutil.which(self.arch.qemu) is None:
            raise InfraError(f"{self.arch.qemu} is not installed")

    def _pre_launch(self) -> None:
        """Create the artifacts and the private socket directory."""
        self._check_accel()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._sockdir = Path(tempfile.mkdtemp(prefix=f"slc-{self.name}-"))
        os.chmod(self._sockdir, 0o700)
        if len(str(self.console_path)) > UNIX_PATH_MAX:
            raise InfraError(f"socket path too long for AF_UNIX: {self.console_path}; "
                             "set TMPDIR to a shorter directory")

    def launch(self) -> None:
        """Start QEMU and connect QMP; raises :class:`QemuLaunchError`."""
        try:
            self._pre_launch()
            self._cmdline = self.build_cmdline()
            (self.artifacts / "qemu.cmdline").write_text(shlex.join(self._cmdline) + "\n")
            self._spawn()
            self._post_launch()
        except BaseException:
            self.shutdown(timeout=2.0)
            raise

    def _spawn(self) -> None:
        """Fork QEMU in its own session, dying with its parent."""
        self._stderr = open(self.artifacts / "qemu.stderr", "wb")
        try:
            self._proc = subprocess.Popen(
                self._cmdline, stdin=subprocess.DEVNULL, stdout=self._stderr,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            raise QemuLaunchError(str(exc), self._cmdline) from exc

    def _launch_error(self, reason: str) -> QemuLaunchError:
        """A launch error with QEMU's output tail."""
        return QemuLaunchError(reason, self._cmdline, _tail(self.artifacts / "qemu.stderr"))

    def _post_launch(self) -> None:
        """Wait for the sockets, then connect and negotiate QMP."""
        deadline = time.monotonic() + self.launch_timeout
        paths = (self.console_path, self.qmp_path, self.gdb_path)
        while not all(p.exists() for p in paths):
            if not self.alive():
                raise self._launch_error(f"QEMU exited early with status {self._proc.poll()}"
                                         if self._proc else "QEMU not started")
            if time.monotonic() > deadline:
                raise self._launch_error("sockets did not appear in time")
            time.sleep(0.02)
        self._connect_qmp(max(1.0, deadline - time.monotonic()))

    def _connect_qmp(self, timeout: float) -> None:
        """Open the QMP session in the machine's private event loop."""
        self._loop = asyncio.new_event_loop()

        async def make() -> QMPClient:
            return QMPClient(self.name)
        self._qmp = self._run(make(), timeout)
        try:
            self._run(self._qmp.connect(str(self.qmp_path)), timeout)
        except Exception as exc:
            raise self._launch_error(f"QMP connect failed: {exc}") from exc

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run one coroutine to completion in the private loop."""
        assert self._loop is not None
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    # -- QMP ------------------------------------------------------------------

    def qmp_command(self, name: str, **args: Any) -> Any:
        """Execute one QMP command and return its ``return`` value.

        Argument names use ``_`` for QMP's ``-`` (``cpu_index`` -> ``cpu-index``).
        """
        if self._qmp is None or not self.alive():
            raise InfraError(f"QMP {name}: machine {self.name!r} is not running")
        qargs = {k.replace("_", "-"): v for k, v in args.items()}
        try:
            return self._run(self._qmp.execute(name, qargs or None), self.qmp_timeout)
        except Exception as exc:
            raise InfraError(f"QMP {name} failed: {exc}") from exc

    def pmemsave(self, addr: int, size: int, path: Path | str) -> None:
        """Have QEMU write L1 physical memory [addr, addr+size) to *path*."""
        self.qmp_command("pmemsave", val=addr, size=size,
                         filename=str(Path(path).resolve()))

    def ram_ranges(self) -> list[tuple[int, int]]:
        """The L1's RAM as ``(start, end)`` physical ranges, from QEMU's memory tree.

        Give them to :class:`harness.gdb.GdbPhysMem`: QEMU's gdbstub reads
        holes as zeros instead of failing.
        """
        text = self.qmp_command("human-monitor-command", command_line="info mtree -f")
        return parse_ram_ranges(str(text))

    # -- shutdown -------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> None:
        """QMP ``quit``, then SIGTERM, then SIGKILL; always cleans up.  Idempotent."""
        try:
            if self.alive():
                self._soft_quit(timeout)
            self._terminate(timeout)
        finally:
            self._kill_hard()
            self._cleanup()
            self._post_shutdown()

    def _soft_quit(self, timeout: float) -> None:
        """Ask QEMU to quit through QMP and wait a bounded time."""
        if self._qmp is None:
            return
        try:
            self._run(self._qmp.execute("quit"), min(timeout, 5.0))
        except Exception:  # QEMU may drop the socket while quitting
            pass
        self._wait(timeout)

    def _wait(self, timeout: float) -> bool:
        """Wait up to *timeout* for QEMU to exit; True if it did."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _terminate(self, timeout: float) -> None:
        """SIGTERM if QEMU still runs."""
        if self.alive():
            assert self._proc is not None
            self._proc.terminate()
            self._wait(timeout)

    def _kill_hard(self) -> None:
        """SIGKILL and reap; runs in ``finally``."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._wait(5.0)
        self.exitcode = self._proc.poll()

    def _cleanup(self) -> None:
        """Close QMP, the loop and the output file; remove the socket directory."""
        if self._qmp is not None and self._loop is not None:
            try:
                self._run(self._qmp.disconnect(), 2.0)
            except Exception:  # the peer is gone already
                pass
        self._qmp = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)

    def _post_shutdown(self) -> None:
        """Hook for subclasses, after QEMU is gone and cleaned up."""

    # -- context manager ------------------------------------------------------

    def __enter__(self) -> Machine:
        self.launch()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()
