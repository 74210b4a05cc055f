"""Stop and keep: the first failing iteration's L1 stays stopped for a person's debugger.

After the failing step (a repeated run with ``--keep-on-failure`` runs no step after
it, and its check leaves its injections in place), :func:`keep`:

1. halts L1 with a CPU in the kernel, saves an ELF core of its memory and what a
   check needs beside it (:func:`harness.replay.save_core`: ``slatcheck replay``
   checks it again offline);
2. ends the harness's own debugger session *without* resuming L1 (the target's
   :class:`~harness.target.Leavable` capability), so the emulator's debug stub
   is free and L1 still stopped;
3. prints the exact command to attach, how to resume and how to quit, and writes
   them to ``keep.json``;
4. waits until Ctrl-C (or SIGTERM), until the machine exits (``monitor quit`` in
   gdb), or until ``--keep-for`` seconds passed; then the run shuts the machine down
   as always.

The machine must have the :class:`~harness.replay.Keepable` capability (QEMU has:
its gdbstub socket, ``dump-guest-memory``).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.artifacts import write_json
from harness.context import RunContext
from harness.machines.base import Machine
from harness.replay import CORE_DIR, Keepable, save_core

__all__ = ["keep", "attach_command", "wait_kept", "Failure"]


@dataclass(frozen=True)
class Failure:
    """A failing iteration to keep: its boot's machine and what the run knows of it."""

    machine: Machine                 # the boot's machine (kept paused)
    ctx: RunContext                  # the failing iteration's context
    iteration: int
    seed: int
    it_dir: Path                     # the iteration's artifact directory
    scenario: Path                   # its reproducer, or the scenario file
    run_dir: Path                    # the repeated run's directory (keep.json)
    keep_for: float | None           # seconds to keep it (None: until Ctrl-C)


def attach_command(gdb: str, architecture: str, socket: Path) -> str:
    """The shell command that attaches gdb to a kept L1.

    >>> attach_command("gdb", "i386:x86-64", Path("/tmp/s/gdb.sock"))
    "gdb -q -ex 'set architecture i386:x86-64' -ex 'target remote /tmp/s/gdb.sock'"
    """
    return shlex.join([gdb, "-q", "-ex", f"set architecture {architecture}",
                       "-ex", f"target remote {socket}"])


def wait_kept(machine: Machine, seconds: float | None, poll: float = 0.5) -> str:
    """Wait for Ctrl-C, the machine's end, or *seconds*; say which."""
    end = None if seconds is None else time.monotonic() + seconds
    try:
        while machine.alive():
            if end is not None and time.monotonic() >= end:
                return f"kept for {seconds:g} s"
            time.sleep(poll)
    except KeyboardInterrupt:
        return "interrupted"
    return "the machine exited"


def _instructions(info: dict[str, Any]) -> str:
    return "\n".join([
        f"KEPT: iteration {info['iteration']} (seed {info['seed']}) failed; L1 is stopped "
        f"where it failed.",
        f"  attach: {info['attach']}",
        "  resume: in gdb, `continue` (Ctrl-C in gdb stops L1 again); `detach` leaves it "
        "running",
        "  quit:   Ctrl-C here (or SIGTERM to this process): the machine is shut down and "
        "the reports written",
        f"  core:   {info['core']}",
        f"  replay: slatcheck replay {info['run_dir']}"])


def _say(line: str) -> None:
    print(line, flush=True)


def keep(failure: Failure, say: Callable[[str], None] = _say,
           wait: Callable[[Machine, float | None], str] = wait_kept) -> None:
    """Keep *failure* (see the module)."""
    machine, ctx = failure.machine, failure.ctx
    if not isinstance(machine, Keepable):
        say(f"cannot keep the failure: the {machine.describe().get('emulator')} machine "
            "cannot be kept")
        return
    it_dir, scenario = failure.it_dir, failure.scenario
    arch = ctx.hypervisor.arch_record
    info: dict[str, Any] = {
        "iteration": failure.iteration, "seed": failure.seed, "run_dir": str(failure.run_dir),
        "socket": str(machine.debug_socket()), "core": None,
        "attach": attach_command(arch.gdb, arch.gdb_architecture, machine.debug_socket()),
        "emulator_pid": getattr(machine, "pid", None), "since": time.time()}
    try:
        info["core"] = str(save_core(ctx, machine, it_dir / CORE_DIR, scenario) / "l1.core")
    except Exception as e:      # noqa: BLE001 - the machine is kept even without a core
        info["core_error"] = f"{type(e).__name__}: {e}"
        say(f"could not save the core: {info['core_error']}")
    write_json(failure.run_dir / "keep.json", info)
    say(_instructions(info))
    info["ended"] = wait(machine, failure.keep_for)
    write_json(failure.run_dir / "keep.json", info)
    say(f"keep ended: {info['ended']}")
