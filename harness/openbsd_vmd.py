"""The vmd path of an OpenBSD workload step: ``vmctl start`` a tiny VM, ``vmctl stop -f`` it.

A workload step with ``driver: vmd`` and one slot ``{gpa: 0, size: S}`` starts
``vmctl start -m S -b /bsd.rd slat-<id>`` (the install's ramdisk kernel as a tiny
L2, booted directly, no firmware), waits until ``vmctl status`` shows it running
with a process id, and reports it like the workload would, as one held VM named
``slat-<id>`` of ``S`` bytes and that pid (the vmd ``vm`` process that created it,
``vm_creator_pid``).  The check pairs it with the kernel's VM of that name,
describes it with vmd's memory map for ``S`` (:mod:`harness.models.vmd_memmap`,
each range's address from the kernel's ``vm_memranges``) and diffs as usual.  A
release stops it with ``vmctl stop -f -w``; a later check must not find it.

>>> parse_status(STATUS_EXAMPLE, "slat-w1")
(1, 43210, 'running')
>>> start_command("w1", 64 << 20)
'vmctl start -m 64M -b /bsd.rd slat-w1'
"""

from __future__ import annotations

import json
import time
from typing import Any

from harness.errors import InfraError

__all__ = ["L2_KERNEL", "vm_name", "start_command", "stop_command", "status_command",
           "parse_status", "report_lines", "destroyed_lines", "STATUS_EXAMPLE",
           "wait_running"]

L2_KERNEL = "/bsd.rd"            # the installer's ramdisk kernel, on the installed disk
STATUS_EXAMPLE = (
    "   ID   PID VCPUS  MAXMEM  CURMEM     TTY        OWNER    STATE   NAME\n"
    "    1 43210     1   64.0M   20.1M   ttyp0         root  running   slat-w1\n")


def vm_name(workload_id: str) -> str:
    """The vmd VM name of a workload step."""
    return f"slat-{workload_id}"


def start_command(workload_id: str, memory: int) -> str:
    """``vmctl start`` of the tiny VM (memory a multiple of 1 MiB)."""
    if memory <= 0 or memory % (1 << 20):
        raise InfraError(f"vmd memory {memory:#x} is not a positive multiple of 1 MiB")
    return f"vmctl start -m {memory >> 20}M -b {L2_KERNEL} {vm_name(workload_id)}"


def stop_command(workload_id: str) -> str:
    """Force the VM off and wait until vmd has torn it down."""
    return f"vmctl stop -f -w {vm_name(workload_id)}"


def status_command(workload_id: str) -> str:
    return f"vmctl status {vm_name(workload_id)}"


def parse_status(text: str, name: str) -> tuple[int, int | None, str] | None:
    """``(id, pid or None, state)`` of VM *name* in ``vmctl status`` output, or None."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    header = next((ln for ln in lines if "PID" in ln and "NAME" in ln), None)
    if header is None:
        return None
    at = {col: i for i, col in enumerate(header)}
    for row in lines:
        if row is header or len(row) != len(header) or row[at["NAME"]] != name:
            continue
        pid = row[at["PID"]]
        return (int(row[at["ID"]]), int(pid) if pid.isdigit() else None,
                row[at["STATE"]] if "STATE" in at else "")
    return None


def report_lines(workload_id: str, vm_id: int, pid: int, memory: int) -> list[str]:
    """The ``@@SLAT`` lines that stand for the running vmd VM, up to its hold."""
    events: list[dict[str, Any]] = [
        {"event": "vm", "vm": 0, "pid": pid, "cycle": 0, "name": vm_name(workload_id),
         "memory": memory, "vm_id": vm_id},
        {"event": "hold"}]
    return ["@@SLAT " + json.dumps(ev) for ev in events]


def destroyed_lines() -> list[str]:
    """The lines after ``vmctl stop -f -w`` returned and the VM is gone."""
    return ['@@SLAT {"event":"destroyed","vm":0}', '@@SLAT {"event":"done","status":0}']


def wait_running(run_status: Any, workload_id: str, timeout: float,
                 interval: float = 2.0) -> tuple[int, int]:
    """Poll ``vmctl status`` (through *run_status*, a command runner returning its output)
    until the VM runs with a pid; ``(id, pid)``."""
    deadline = time.monotonic() + timeout
    name = vm_name(workload_id)
    last = ""
    while True:
        last = run_status(status_command(workload_id))
        got = parse_status(last, name)
        if got is not None and got[1] is not None:
            return got[0], got[1]
        if time.monotonic() > deadline:
            raise InfraError(f"vmd VM {name} is not running with a pid after {timeout:.0f} s; "
                             f"vmctl status said:\n{last}")
        time.sleep(interval)
