"""QEMU as the machine backend: one QEMU process running the L1 guest.

:class:`QemuMachine` implements :class:`harness.machines.base.Machine` in the
manner of QEMU's own ``python/qemu/machine/machine.py``: it builds the command
line from small overridable hooks, launches QEMU with its console, QMP monitor
and gdbstub on unix sockets in a private 0700 directory (nothing listens on
TCP), and on exit asks QMP to ``quit``, then sends SIGTERM, then SIGKILL, each
with a bounded wait.  Cleanup runs in ``finally``, whatever the exception.

It boots a kernel and initrd (``-kernel``) or a disk through the firmware, the
disk behind a throw-away qcow2 overlay in the private directory.  Its debug
target speaks the remote protocol directly to the gdbstub
(:class:`harness.rsp.RspTarget`); gdb itself (:class:`harness.gdb.GdbTarget`)
is one call away for what needs it.  RAM ranges and address translation come
from QMP.  :meth:`QemuMachine.save_state` migrates
the machine to a file; a config with ``incoming`` starts from one.

QMP goes through the asynchronous ``qemu.qmp.QMPClient`` driven by a private
event loop owned by the machine, so that the machine does not install a
process-wide event loop as the legacy synchronous shim would.

>>> cfg = MachineConfig(arch=ARCHES["x86_64"], boot=KernelBoot(k, i, "console=ttyS0"),
...                     artifacts=Path("out"), cpu="max")
>>> with QemuMachine(cfg) as m:                        # doctest: +SKIP
...     m.qmp_command("query-status")["status"]
'running'
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from qemu.qmp import QMPClient

from harness.console import ConsoleEndpoint, UnixEndpoint
from harness.errors import InfraError
from harness.machines.base import CdromBoot, DiskBoot, KernelBoot, MachineConfig
from harness.scratch import private_dir
from harness.target import Target

__all__ = [
    "QemuMachine",
    "QemuLaunchError",
    "kvm_usable",
    "parse_ram_ranges",
]

T = TypeVar("T")

PR_SET_PDEATHSIG = 1
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


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


_VERSIONS: dict[str, str] = {}


def _qemu_version(binary: str) -> str:
    """The first line of ``<binary> --version``, asked once per process."""
    if binary not in _VERSIONS:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        _VERSIONS[binary] = out.splitlines()[0] if out else "unknown"
    return _VERSIONS[binary]


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


class QemuMachine:
    """Owns one QEMU process and its console, QMP and gdbstub sockets.

    Built from a :class:`~harness.machines.base.MachineConfig`; writes
    ``qemu.cmdline``, ``qemu.stderr`` and (with ``fault_log``) ``qemu.log`` into
    the config's artifact directory.
    """

    launch_timeout = 15.0   # seconds for the sockets to appear and QMP to greet
    qmp_timeout = 30.0      # seconds for one QMP command
    migrate_timeout = 120.0  # seconds for a state save or restore

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.arch = config.arch
        self.artifacts = config.artifacts
        self.name = config.name
        self._sockdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qmp: QMPClient | None = None
        self._cmdline: list[str] = []
        self._version: str | None = None
        self.exitcode: int | None = None

    # -- paths and state ----------------------------------------------------

    def _sock(self, what: str) -> Path:
        """Path of one unix socket (or file) in the private directory."""
        if self._sockdir is None:
            raise InfraError(f"machine {self.name!r} is not launched")
        return self._sockdir / what

    @property
    def console_path(self) -> Path:
        """Unix socket of the L1 serial console (ttyS0 / ttyAMA0)."""
        return self._sock("console.sock")

    @property
    def console(self) -> ConsoleEndpoint:
        """The console endpoint (a unix socket)."""
        return UnixEndpoint(self.console_path)

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
        """Where ``-d`` writes (only with ``fault_log``)."""
        return self.artifacts / "qemu.log"

    @property
    def fault_log(self) -> Path | None:
        """``qemu.log`` with SVM's ``vmrun!`` lines, when recorded."""
        return self.qemu_log_path if self.config.fault_log else None

    def alive(self) -> bool:
        """True while the QEMU process runs."""
        return self._proc is not None and self._proc.poll() is None

    # -- command line hooks ---------------------------------------------------

    def _base_args(self) -> list[str]:
        """Arguments every machine gets: no graphics, no defaults, no TCP."""
        c = self.config
        return ["-M", self.arch.machine, "-cpu", c.cpu, "-accel", c.accel,
                "-m", f"{c.memory >> 20}M", "-smp", str(c.smp),
                "-display", "none", "-nodefaults", "-no-reboot"]

    def _socket_args(self) -> list[str]:
        """Console, QMP and gdbstub, each on a unix socket server."""
        def chardev(cid: str, path: Path) -> list[str]:
            return ["-chardev", f"socket,id={cid},path={path},server=on,wait=off"]
        return [*chardev("con0", self.console_path), "-serial", "chardev:con0",
                *chardev("qmp0", self.qmp_path), "-mon", "chardev=qmp0,mode=control",
                *chardev("gdb0", self.gdb_path), "-gdb", "chardev:gdb0"]

    def _boot_args(self) -> list[str]:
        """Direct kernel boot, a CD-ROM, or a disk (behind its overlay) through the firmware."""
        boot = self.config.boot
        if isinstance(boot, KernelBoot):
            args = ["-kernel", str(boot.kernel)]
            if boot.initrd is not None:
                args += ["-initrd", str(boot.initrd)]
            return args + (["-append", boot.append] if boot.append else [])
        if isinstance(boot, CdromBoot):
            return ["-drive", f"file={boot.iso},format=raw,media=cdrom,readonly=on",
                    "-boot", "d"]
        disk = (f"file={boot.disk},format={boot.format}" if boot.writable
                else f"file={self._sock('overlay.qcow2')},format=qcow2")
        args = ["-drive", f"{disk},if=virtio"]
        if boot.cdrom is not None:
            args += ["-drive", f"file={boot.cdrom},format=raw,media=cdrom,readonly=on"]
        return args + list(boot.network)

    def _log_args(self) -> list[str]:
        """``-d in_asm -dfilter 0x0+0x1`` leaves only SVM's ``vmrun!`` lines."""
        if not self.config.fault_log:
            return []
        return ["-d", "in_asm", "-dfilter", "0x0+0x1", "-D", str(self.qemu_log_path)]

    def _incoming_args(self) -> list[str]:
        """Start from a saved state instead of booting."""
        inc = self.config.incoming
        return [] if inc is None else ["-incoming", f"exec:cat {shlex.quote(str(inc))}"]

    def build_cmdline(self) -> list[str]:
        """The complete command line; needs the socket directory."""
        return [self.arch.qemu, *self._base_args(), *self._socket_args(),
                *self._boot_args(), *self._log_args(), *self._incoming_args(),
                *self.config.extra_args]

    # -- launch ---------------------------------------------------------------

    def _check_accel(self) -> None:
        """Refuse an accelerator this host cannot give."""
        if self.config.accel == "kvm" and not kvm_usable():
            raise InfraError("accel 'kvm' requested but /dev/kvm is missing or not "
                             "usable on this host; use accel 'tcg'")
        if shutil.which(self.arch.qemu) is None:
            raise InfraError(f"{self.arch.qemu} is not installed")

    def _pre_launch(self) -> None:
        """Create the artifacts and the private socket directory."""
        self._check_accel()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._sockdir = private_dir(self.name)
        if len(str(self.console_path)) > UNIX_PATH_MAX:
            raise InfraError(f"socket path too long for AF_UNIX: {self.console_path}; "
                             "set TMPDIR to a shorter directory")
        if isinstance(self.config.boot, DiskBoot) and not self.config.boot.writable:
            self._make_overlay(self.config.boot)

    def _make_overlay(self, boot: DiskBoot) -> None:
        """A qcow2 overlay over the (read-only) disk, in the private directory."""
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", boot.format,
               "-b", str(boot.disk.resolve()), str(self._sock("overlay.qcow2"))]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise InfraError(f"cannot create the disk overlay: {shlex.join(cmd)}: "
                             f"{detail.strip()}") from exc

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
        if self.config.incoming is not None:
            self._finish_incoming()

    def _finish_incoming(self) -> None:
        """Wait until the saved state is loaded, then let the L1 run."""
        deadline = time.monotonic() + self.migrate_timeout
        while self.qmp_command("query-status")["status"] == "inmigrate":
            if time.monotonic() > deadline:
                raise self._launch_error("loading the saved state did not finish in time")
            time.sleep(0.01)
        if self.qmp_command("query-status")["status"] != "running":
            self.qmp_command("cont")

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

    def save_state(self, path: Path) -> None:
        """Migrate the whole machine to *path*; the L1 is stopped meanwhile, then resumed."""
        self.qmp_command("stop")
        try:
            self.qmp_command("migrate", uri=f"exec:cat > {shlex.quote(str(path.resolve()))}")
            deadline = time.monotonic() + self.migrate_timeout
            while True:
                info = self.qmp_command("query-migrate")
                if info.get("status") == "completed":
                    return
                if info.get("status") in ("failed", "cancelled"):
                    raise InfraError(f"saving the machine state failed: {info}")
                if time.monotonic() > deadline:
                    raise InfraError("saving the machine state did not finish in time")
                time.sleep(0.01)
        finally:
            if self.alive():
                self.qmp_command("cont")

    # -- stop and keep (harness.replay.Keepable) --------------------------------

    def debug_socket(self) -> Path:
        """The gdbstub's unix socket: a person's gdb attaches here (``target remote``)."""
        return self.gdb_path

    def dump_core(self, path: Path) -> None:
        """QMP ``dump-guest-memory``: L1's physical memory as an ELF core (``paging``
        off: one PT_LOAD per RAM block at its guest-physical address, CPU notes).  A
        stopped L1 stays stopped; a running one is paused for the dump."""
        if self._qmp is None or not self.alive():
            raise InfraError(f"dump-guest-memory: machine {self.name!r} is not running")
        args = {"paging": False, "protocol": f"file:{Path(path).resolve()}"}
        try:
            self._run(self._qmp.execute("dump-guest-memory", args), self.migrate_timeout)
        except Exception as exc:
            raise InfraError(f"QMP dump-guest-memory failed: {exc}") from exc

    def state_key(self) -> dict[str, str]:
        """What a saved state of this config depends on (the image aside): the binary
        (path, size, time), its version, the machine options and the boot source.
        Logging (``-d``) and socket paths are not part of the state."""
        c, binary = self.config, shutil.which(self.arch.qemu) or self.arch.qemu
        try:
            st = os.stat(binary)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "?"
        return {"emulator": "qemu", "binary": binary, "binary.stamp": stamp,
                "version": _qemu_version(binary), "arch": self.arch.name,
                "machine": self.arch.machine, "cpu": c.cpu, "memory": str(c.memory),
                "smp": str(c.smp), "accel": c.accel, "boot": repr(c.boot),
                "extra": shlex.join(c.extra_args)}

    def version(self) -> str:
        """QEMU's version (QMP ``query-version``), asked once."""
        if self._version is None:
            v = self.qmp_command("query-version")
            q = v["qemu"]
            package = str(v.get("package", "")).strip()     # " (Debian 1:7.2+dfsg-7...)"
            self._version = f"{q['major']}.{q['minor']}.{q['micro']}" + \
                (f" {package}" if package else "")
        return self._version

    def describe(self) -> dict[str, str]:
        """Provenance: binary, version, accelerator, CPU and machine type."""
        return {"emulator": "qemu", "binary": self.arch.qemu, "version": self.version(),
                "accel": self.config.accel, "cpu": self.config.cpu,
                "machine": self.arch.machine}

    def translate(self, va: int) -> int:
        """QEMU's own translation of a kernel virtual address (HMP ``gva2gpa``)."""
        out = str(self.qmp_command("human-monitor-command", command_line=f"gva2gpa {va:#x}"))
        m = re.search(r"gpa:\s*(0x[0-9a-fA-F]+)", out)
        if m is None:
            raise InfraError(f"QEMU gva2gpa {va:#x}: {out.strip()!r}")
        return int(m.group(1), 16)

    @contextlib.contextmanager
    def open_target(self, log_dir: Path) -> Iterator[Target]:
        """The remote protocol spoken directly to the gdbstub (``rsp.log``), as a
        :class:`~harness.target.Target`; the L1 runs again once attached."""
        from harness.rsp import RspClient, RspTarget
        with RspClient(self.gdb_path, log_path=log_dir / "rsp.log") as client:
            client.cont()
            yield RspTarget(client, ram_ranges=self.ram_ranges, translate=self.translate)

    @contextlib.contextmanager
    def open_gdb_target(self, log_dir: Path, resume: bool = True) -> Iterator[Target]:
        """gdb attached to the gdbstub (``gdb.log``), for what needs a real gdb."""
        from harness.gdb import GdbSession, GdbTarget
        with GdbSession(self.gdb_path, log_dir / "gdb.log", arch=self.arch,
                        resume=resume) as session:
            yield GdbTarget(session, ram_ranges=self.ram_ranges, translate=self.translate)

    def ram_ranges(self) -> list[tuple[int, int]]:
        """The L1's RAM as ``(start, end)`` physical ranges, from QEMU's memory tree.

        Read through :class:`harness.target.PhysView` with them: QEMU's gdbstub reads
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

    def __enter__(self) -> QemuMachine:
        self.launch()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()
