"""Bochs as the machine backend: Intel VMX with EPT, which QEMU's TCG lacks.

:class:`BochsMachine` implements :class:`harness.machines.base.Machine` with
Debian's Bochs 2.7 (``bochs-bin``, built with its internal debugger):

* a ``bochsrc`` generated per run (written to the artifacts as ``bochsrc.txt``):
  CPU model (``corei7_skylake_x`` for the architecture's default ``max``),
  RAM, CPU count, the ISOLINUX CD-ROM of a :class:`CdromBoot`, no USB and no
  optional devices but COM1;
* COM1 on a pty the machine opens: Bochs opens the slave by name
  (``com1: mode=term``), the console works on the master
  (:class:`~harness.console.FdEndpoint`); nothing listens on TCP for it;
* Bochs's own terminal is a second pty under pexpect: the debugger
  (:class:`~harness.machines.bochs_debugger.BochsDebugger`), which is also the
  debug :class:`~harness.target.Target` (:meth:`BochsMachine.open_target`);
* the display is Bochs's ``rfb`` VNC server (Debian's build has no headless
  display).  It listens on the first free port of 5900..5949 on every
  interface (Bochs 2.7 cannot be told otherwise); the machine connects to it
  at once and holds the connection until shutdown, so that no other client can
  use it (the server takes one client at a time);
* ``bochs.log`` in the artifacts: Bochs's log, with a line per EPT violation
  (``VMEXIT: EPT violation for guest paddr 0x...``): the
  :attr:`~BochsMachine.fault_log`.

Saving and restoring (warm starts).  Bochs 2.7's debugger has no save command;
the one way is the GUI's "save state" button: :meth:`BochsMachine.save_state`
clicks it over RFB, types the directory on the GUI's console, waits for the
state's ``config`` file, answers "continue" with yes, and uses a debugger break
as the barrier (the prompt comes only after the dialog closed).  A config with
``incoming`` restores such a directory with ``bochs-bin -r``: the saved
``config`` (Bochs's own bochsrc of the saved machine) is rewritten for this run
(COM1's pty, the log), every other file is linked.  COM1's input survives the
restore only because the optional plugins load in the cold start's order: Bochs
restores timers by index, and a restore loads optional plugins in another order
than a cold start (``usb_uhci``, which the i440FX chipset adds, before
``serial``), which gives COM1's receive timer the saved state of USB's timer
(seen: input dead after restore): :func:`restore_config` lists them in the cold
start's order.

Shutdown: ``q`` at the debugger prompt, then SIGTERM, then SIGKILL; Bochs dies
with the harness (PR_SET_PDEATHSIG); the private directory (bochsrc, restore
links, ``writemem`` files) is removed.

>>> print(bochsrc_cpu("max", 1))
cpu: model=corei7_skylake_x, count=1, ips=100000000, ignore_bad_msrs=1
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import time
import tty
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import pexpect

from harness.console import ConsoleEndpoint, FdEndpoint
from harness.errors import InfraError
from harness.machines.base import CdromBoot, MachineConfig
from harness.machines.bochs_debugger import BochsDebugger, BochsTarget
from harness.machines.direct_map import find_direct_map
from harness.machines.rfb import RfbClient
from harness.mem import PhysMem
from harness.scratch import private_dir
from harness.target import PhysView, Target

__all__ = ["BochsMachine", "BochsLaunchError", "bochsrc", "bochsrc_cpu", "bochs_model",
           "restore_config",
           "ram_ranges", "BOCHS", "DEFAULT_MODEL", "rfb_port"]

BOCHS = "bochs-bin"                     # Debian's binary (`bochs` is a wrapper adding -q)
BIOS = "/usr/share/bochs/BIOS-bochs-latest"          # package bochsbios
VGABIOS = "/usr/share/bochs/VGABIOS-lgpl-latest"     # package vgabios
DEFAULT_MODEL = "corei7_skylake_x"      # VMX with EPT, A/D bits, unrestricted guest
IPS = 100_000_000                       # emulated instructions per emulated second
MAX_MEMORY = 3 << 30                    # RAM below the PCI hole only
SAVE_BUTTON = 48                        # x from the right edge: the second 32-px button
HEADER_Y = 8                            # inside the 32-px header bar
SAVE_SETTLE = 0.5                       # seconds between the click and the typing
SAVE_ROUND = 5.0                        # seconds to wait for the state before clicking again
RFB_WAIT = 30.0                         # seconds for the RFB thread to log its port
COLD_ORDER_KNOWN = frozenset({"serial", "usb_uhci"})   # optional plugins a cold start loads
PR_SET_PDEATHSIG = 1
RFB_PORT_LINE = re.compile(r"listening for connections on port (\d+)")
VERSION_LINE = re.compile(r"Bochs x86 Emulator ([0-9][^\s]*)")


class BochsLaunchError(InfraError):
    """Bochs did not come up; carries its command line and the tail of its output."""

    def __init__(self, reason: str, cmdline: list[str], output_tail: str = "") -> None:
        self.reason = reason
        self.cmdline = cmdline
        self.output_tail = output_tail
        msg = f"Bochs launch failed: {reason}\ncommand: {shlex.join(cmdline)}"
        if output_tail:
            msg += f"\nBochs output (tail):\n{output_tail}"
        super().__init__(msg)


def bochs_model(cpu: str) -> str:
    """The Bochs CPU model for machine.cpu *cpu*: ``max`` (the x86 default) is
    :data:`DEFAULT_MODEL`, anything else must be a Bochs model name."""
    model = DEFAULT_MODEL if cpu == "max" else cpu
    if not re.fullmatch(r"[a-z0-9_]+", model):
        raise InfraError(f"machine.cpu {cpu!r} is not a Bochs CPU model "
                         "(`bochs-bin --help cpu` lists them)")
    return model


def bochsrc_cpu(cpu: str, count: int) -> str:
    """The ``cpu:`` line (unknown MSRs are logged, not fatal: Linux probes a few)."""
    return f"cpu: model={bochs_model(cpu)}, count={count}, ips={IPS}, ignore_bad_msrs=1"


def bochsrc(config: MachineConfig, *, com1: str, log: Path) -> str:
    """The configuration of one cold start: CD-ROM boot, COM1 on the pty *com1*."""
    boot = config.boot
    if not isinstance(boot, CdromBoot):
        raise InfraError("the Bochs backend boots a CD-ROM image (an image with 'iso:'); "
                         f"got {type(boot).__name__}")
    if config.memory > MAX_MEMORY or config.memory % (1 << 20):
        raise InfraError(f"Bochs machine memory must be whole MiB up to {MAX_MEMORY >> 20} MiB")
    mib = config.memory >> 20
    return "\n".join([
        f"# generated by slatcheck for machine {config.name}",
        # every optional plugin off but serial: see the module docstring (restore)
        "plugin_ctrl: unmapped=0, biosdev=0, speaker=0, extfpuirq=0, parallel=0, "
        "gameport=0, iodebug=0",
        "config_interface: textconfig",
        'display_library: rfb, options="timeout=0"',
        f"memory: guest={mib}, host={mib}",
        f"romimage: file={BIOS}",
        f"vgaromimage: file={VGABIOS}",
        bochsrc_cpu(config.cpu, config.smp),
        "clock: sync=none, time0=1700000000",
        f'ata0-master: type=cdrom, path="{boot.iso}", status=inserted',
        "boot: cdrom",
        "floppy_bootsig_check: disabled=1",
        f"com1: enabled=1, mode=term, dev={com1}",
        f"log: {log}",
        "logprefix: %t%e%d",
        "panic: action=fatal", "error: action=report", "info: action=report",
        "debug: action=ignore", ""])


def restore_config(saved: str, *, com1: str, log: Path) -> str:
    """A saved state's ``config`` for this run: COM1's pty and the log path replaced, and
    the optional plugins listed in the order a cold start initialised them.

    Bochs restores timers by index, and a restore loads optional plugins in the order of
    the ``plugin_ctrl`` line it wrote, where ``usb_uhci`` (which the i440FX chipset adds
    after the others, and which cannot be disabled there) comes before ``serial``: COM1's
    receive timer would get USB's saved state (seen: console input dead after a restore).
    ``usb_uhci`` goes last, as in a cold start; a state with other optional plugins loaded
    is refused.
    """
    out, seen = [], set()
    for line in saved.splitlines():
        key = line.split(":", 1)[0].strip()
        if key == "plugin_ctrl":
            line = _plugin_ctrl_in_cold_order(line)
        elif key == "com1":
            line = f"com1: enabled=1, mode=term, dev={com1}"
        elif key == "log":
            line = f"log: {log}"
        seen.add(key)
        out.append(line)
    missing = {"com1", "log", "plugin_ctrl"} - seen
    if missing:
        raise InfraError(f"the saved Bochs config has no {sorted(missing)} line")
    return "\n".join(out) + "\n"


def _plugin_ctrl_in_cold_order(line: str) -> str:
    """``plugin_ctrl:`` with ``usb_uhci`` moved last; only serial and usb_uhci may load."""
    entries = [kv.strip() for kv in line.split(":", 1)[1].split(",") if kv.strip()]
    loaded = [kv.split("=")[0] for kv in entries if kv.endswith("=true")]
    if not set(loaded) <= COLD_ORDER_KNOWN:
        raise InfraError(f"the saved Bochs machine loaded optional plugins {loaded}; only "
                         f"{sorted(COLD_ORDER_KNOWN)} restore in a known order: boot cold")
    last = [kv for kv in entries if kv.split("=")[0] == "usb_uhci"]
    return "plugin_ctrl: " + ", ".join([kv for kv in entries if kv not in last] + last)


def ram_ranges(memory: int) -> list[tuple[int, int]]:
    """RAM of a Bochs PC with *memory* bytes: below the VGA hole, and above 1 MiB.

    >>> [(hex(a), hex(b)) for a, b in ram_ranges(1 << 30)]
    [('0x0', '0xa0000'), ('0x100000', '0x40000000')]
    """
    return [(0, 0xA0000), (0x100000, memory)]


def rfb_port(log_text: str) -> int | None:
    """The port Bochs's RFB server chose, from its log."""
    found = RFB_PORT_LINE.findall(log_text)
    return int(found[-1]) if found else None


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL Bochs when the launching thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])


def _l1_direct_map(target: BochsTarget) -> int | None:
    """The L1 kernel's direct map, from the halted CPU's own page tables."""
    phys: PhysMem = PhysView(target, target.ram_ranges())
    return find_direct_map(phys, target.register("cr3"), target.register("cr4"))


DEBUGGER_TERM = "xterm"


def debugger_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Bochs's environment with a known terminal type for its debugger's readline.

    Without ``TERM`` (CI jobs, tox) readline takes an accepted line without printing
    the newline that :meth:`BochsDebugger.cont` waits for, so every run would end in
    "the debugger did not take the `c` command".

    >>> debugger_env({"PATH": "/bin"})["TERM"], debugger_env({"TERM": "dumb"})["TERM"]
    ('xterm', 'xterm')
    """
    return {**environ, "TERM": DEBUGGER_TERM}


class BochsMachine:
    """Owns one Bochs process, its two ptys, its RFB connection and private directory."""

    launch_timeout = 60.0    # seconds to the first debugger prompt, cold
    restore_timeout = 600.0  # ... when restoring a saved state (reads the whole RAM file)
    save_timeout = 300.0     # seconds for a state save
    quit_timeout = 10.0

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.artifacts = config.artifacts
        self.name = config.name
        self._dir: Path | None = None
        self._child: pexpect.spawn | None = None
        self._dbglog: IO[str] | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._rfb: RfbClient | None = None
        self.debugger: BochsDebugger | None = None
        self._cmdline: list[str] = []
        self._version = ""
        self.exitcode: int | None = None

    # -- paths and state ----------------------------------------------------------

    def _private(self, what: str) -> Path:
        if self._dir is None:
            raise InfraError(f"machine {self.name!r} is not launched")
        return self._dir / what

    @property
    def log_path(self) -> Path:
        """Bochs's log (``log:``), in the artifacts."""
        return self.artifacts / "bochs.log"

    @property
    def console(self) -> ConsoleEndpoint:
        """COM1: the master side of the pty whose slave Bochs opened."""
        if self._master is None:
            raise InfraError(f"machine {self.name!r} is not launched")
        return FdEndpoint(self._master)

    @property
    def fault_log(self) -> Path | None:
        """``bochs.log``, whose ``VMEXIT: EPT violation`` lines record L2's faults."""
        return self.log_path if self.config.fault_log else None

    @property
    def cmdline(self) -> list[str]:
        return list(self._cmdline)

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def alive(self) -> bool:
        return self._child is not None and self._child.isalive()

    # -- launch ------------------------------------------------------------------------

    def _pre_launch(self) -> None:
        """Check the binary; make the artifacts, the private directory and COM1's pty."""
        if shutil.which(BOCHS) is None:
            raise InfraError(f"{BOCHS} is not installed (apt-get install bochs bochsbios "
                             "vgabios)")
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._dir = private_dir(f"bochs-{self.name}")   # swept by a later run if killed
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        os.set_inheritable(self._master, False)
        os.set_inheritable(self._slave, False)

    def _write_config(self) -> list[str]:
        """The bochsrc (cold) or the restore directory (warm); Bochs's arguments."""
        assert self._slave is not None
        com1, log = os.ttyname(self._slave), self.log_path
        if self.config.incoming is None:
            text = bochsrc(self.config, com1=com1, log=log)
            rc = self._private("bochsrc.txt")
            rc.write_text(text)
            (self.artifacts / "bochsrc.txt").write_text(text)
            return ["-q", "-f", str(rc)]
        restore = self._private("restore")
        restore.mkdir()
        state = self.config.incoming.resolve()
        if not (state / "config").is_file():
            raise InfraError(f"{state} is not a saved Bochs state (no config file)")
        for f in state.iterdir():
            if f.name != "config":
                (restore / f.name).symlink_to(f)
        text = restore_config((state / "config").read_text(), com1=com1, log=log)
        (restore / "config").write_text(text)
        (self.artifacts / "bochsrc.txt").write_text(text)
        return ["-q", "-r", str(restore)]

    def launch(self) -> None:
        """Start Bochs, wait for its debugger, hold its RFB server, let it run."""
        try:
            self._pre_launch()
            self._cmdline = [BOCHS, *self._write_config()]
            (self.artifacts / "bochs.cmdline").write_text(shlex.join(self._cmdline) + "\n")
            self._spawn()
            self._post_launch()
        except BaseException:
            self.shutdown(timeout=2.0)
            raise

    def _spawn(self) -> None:
        self._dbglog = open(self.artifacts / "bochs-debugger.log", "w", encoding="utf-8")
        try:
            self._child = pexpect.spawn(
                self._cmdline[0], self._cmdline[1:], cwd=str(self._dir), encoding="utf-8",
                env=debugger_env(os.environ),
                codec_errors="replace", timeout=60, maxread=65536, echo=False,
                searchwindowsize=4096, preexec_fn=_die_with_parent, dimensions=(50, 1000))
        except (OSError, pexpect.ExceptionPexpect) as exc:
            raise BochsLaunchError(str(exc), self._cmdline) from exc
        self._child.logfile_read = self._dbglog
        self._child.delaybeforesend = None     # pexpect's default 50 ms per command
        self.debugger = BochsDebugger(self._child)

    def _launch_error(self, reason: str) -> BochsLaunchError:
        tail = "\n".join(filter(None, [_tail(self.artifacts / "bochs-debugger.log"),
                                       _tail(self.log_path, 10)]))
        return BochsLaunchError(reason, self._cmdline, tail)

    def _post_launch(self) -> None:
        """First prompt (the machine is built, COM1 open), then RFB, then run."""
        assert self.debugger is not None
        wait = self.launch_timeout if self.config.incoming is None else self.restore_timeout
        try:
            banner = self.debugger.wait_prompt(wait)
        except InfraError as exc:
            raise self._launch_error(str(exc).splitlines()[0]) from exc
        m = VERSION_LINE.search(banner)
        self._version = m.group(1) if m else "unknown"
        if self._slave is not None:            # Bochs holds COM1 open now
            os.close(self._slave)
            self._slave = None
        port = self._rfb_port()
        if port is None:
            raise self._launch_error("Bochs's RFB display did not say which port it took")
        self._rfb = RfbClient(port)
        self._rfb.connect()
        self.debugger.cont()

    def _rfb_port(self) -> int | None:
        """The RFB server's port, from the log its thread writes (maybe after the prompt)."""
        deadline = time.monotonic() + RFB_WAIT
        while True:
            port = rfb_port(self.log_path.read_text(errors="replace"))
            if port is not None or time.monotonic() > deadline or not self.alive():
                return port
            time.sleep(0.05)

    # -- state ---------------------------------------------------------------------------

    def save_state(self, path: Path) -> None:
        """Save the running machine into directory *path* with Bochs's save button.

        The L1 is stopped by Bochs while the state is written, then runs on.
        """
        dbg, rfb = self.debugger, self._rfb
        if dbg is None or rfb is None or not self.alive():
            raise InfraError(f"machine {self.name!r} is not running")
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise InfraError(f"{path} is not empty: a Bochs state needs a directory of its own")
        link = self._private("s")          # a short name to type on Bochs's console
        link.unlink(missing_ok=True)
        link.symlink_to(path.resolve())
        dbg.cont()
        self._start_save(rfb, path)
        rfb.type("y\n")                    # "Do you want to continue?" (read after the save)
        dbg.stop(self.save_timeout)        # the prompt comes only when the dialog is over
        dbg.cont()
        link.unlink(missing_ok=True)
        if not (path / "memory.ram").is_file():
            raise InfraError(f"Bochs's saved state in {path} has no memory.ram")

    def _start_save(self, rfb: RfbClient, path: Path) -> None:
        """Click the save button and type the directory until Bochs writes ``config``.

        Bochs's RFB display drops every event queued behind a header-bar click, so
        the keys go in a later poll than the click; a dialog that got only part of
        the name (Bochs descheduled) cancels, and the next round starts again.
        """
        deadline = time.monotonic() + self.save_timeout
        while True:
            rfb.click(rfb.width - SAVE_BUTTON, HEADER_Y)
            time.sleep(SAVE_SETTLE)
            rfb.type("s\n")
            round_end = time.monotonic() + SAVE_ROUND
            while time.monotonic() < round_end:
                if (path / "config").exists():
                    return
                if not self.alive():
                    raise InfraError("Bochs exited while saving its state:\n"
                                     f"{_tail(self.log_path)}")
                time.sleep(0.05)
            if time.monotonic() > deadline:
                raise InfraError(f"Bochs did not start writing its state into {path} within "
                                 f"{self.save_timeout:g} s")

    def version(self) -> str:
        return self._version

    def state_key(self) -> dict[str, str]:
        """What a saved state of this config depends on (the image aside): the binary and
        its version, the CPU model and count, the memory and the boot source."""
        c = self.config
        return {"emulator": "bochs", "binary": BOCHS, "version": self.version(),
                "arch": c.arch.name, "cpu": bochs_model(c.cpu), "memory": str(c.memory),
                "smp": str(c.smp), "boot": repr(c.boot)}

    def describe(self) -> dict[str, str]:
        """Provenance: binary, version, CPU model and count."""
        return {"emulator": "bochs", "binary": BOCHS, "version": self.version(),
                "accel": "emulation", "cpu": bochs_model(self.config.cpu),
                "smp": str(self.config.smp)}

    @contextlib.contextmanager
    def open_target(self, log_dir: Path) -> Iterator[Target]:
        """The debugger as a Target (its transcript is ``bochs-debugger.log``)."""
        if self.debugger is None or self._dir is None:
            raise InfraError(f"machine {self.name!r} is not launched")
        yield BochsTarget(self.debugger, workdir=self._dir,
                          ram=ram_ranges(self.config.memory), cpus=self.config.smp,
                          direct_map=_l1_direct_map)

    # -- shutdown ------------------------------------------------------------------------

    def shutdown(self, timeout: float = 10.0) -> None:
        """``q`` at the debugger prompt, then SIGTERM, then SIGKILL; cleanup always."""
        try:
            if self.alive():
                self._soft_quit(timeout)
        finally:
            self._kill_hard()
            self._cleanup()

    def _soft_quit(self, timeout: float) -> None:
        assert self._child is not None and self.debugger is not None
        try:
            self.debugger.stop()
            self._child.sendline("q")
            self._child.expect(pexpect.EOF, timeout=min(timeout, self.quit_timeout))
        except (InfraError, pexpect.ExceptionPexpect, OSError):
            pass

    def _kill_hard(self) -> None:
        if self._child is None:
            return
        with contextlib.suppress(pexpect.ExceptionPexpect, OSError):
            self._child.close(force=True)      # SIGHUP, SIGINT, then SIGKILL
        if self._child.isalive():
            with contextlib.suppress(OSError):
                os.kill(self._child.pid, signal.SIGKILL)
        self.exitcode = self._child.exitstatus if self._child.exitstatus is not None \
            else self._child.signalstatus

    def _cleanup(self) -> None:
        if self._rfb is not None:
            self._rfb.close()
            self._rfb = None
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        if self._dbglog is not None:
            self._dbglog.close()
            self._dbglog = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- context manager -----------------------------------------------------------------

    def __enter__(self) -> BochsMachine:
        self.launch()
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()
