"""The bhyvectl path of a FreeBSD workload step: a real bhyve VM made by ``bhyvectl``.

A workload step with ``driver: bhyvectl`` and one slot ``{gpa: 0, size: S}`` runs
``bhyvectl --vm=slat-<id> --create`` and ``--set-mem=<S in MiB>`` (libvmmapi's
``vm_setup_memory()``: system memory below 3 GiB and the rest above 4 GiB), so that
vmm.ko holds a VM no slat-workload process created: it lives in the kernel until
``bhyvectl --vm=slat-<id> --destroy``, whoever made it.  No vCPU runs, so its nested
tables stay empty; no process maps its memory either, so the backing source has no
frame to give and a leaf that appeared anyway is not judged against one (the frames
would come from the segment's VM object, which discovery does not read yet).  What
this path checks is the rest: the VM found by name, its memory map, its teardown.  The
step reports it like the workload would, as one held VM named ``slat-<id>`` of ``S``
bytes with pid 0; the check pairs it by name with the kernel's ``/dev/vmm/slat-<id>``,
describes it with libvmmapi's memory map for ``S``
(:func:`harness.models.bhyve.vm_setup_memory`, which must equal the kernel's
``mem_maps``, else a ``memmap`` finding) and diffs as usual.  A release destroys it;
``/dev/vmm/slat-<id>`` must then be gone, and a later check must not find it.

The option names are bhyvectl(8)'s [inferred: ``--create``, ``--destroy``,
``--set-mem`` in MiB, as ``usr.sbin/bhyvectl/bhyvectl.c`` parses them].

>>> create_command("w1", 64 << 20)
'bhyvectl --vm=slat-w1 --create && bhyvectl --vm=slat-w1 --set-mem=64'
"""

from __future__ import annotations

import json
from typing import Any

from harness.errors import InfraError
from harness.models.base import MemRange
from harness.models.bhyve import vm_setup_memory

__all__ = ["vm_name", "create_command", "destroy_command", "exists_command",
           "report_lines", "destroyed_lines", "memory_map"]


def vm_name(workload_id: str) -> str:
    """The bhyve VM name of a workload step."""
    return f"slat-{workload_id}"


def create_command(workload_id: str, memory: int) -> str:
    """Create the VM and set up its system memory (a multiple of 1 MiB)."""
    if memory <= 0 or memory % (1 << 20):
        raise InfraError(f"bhyve memory {memory:#x} is not a positive multiple of 1 MiB")
    name = vm_name(workload_id)
    return f"bhyvectl --vm={name} --create && bhyvectl --vm={name} --set-mem={memory >> 20}"


def destroy_command(workload_id: str) -> str:
    return f"bhyvectl --vm={vm_name(workload_id)} --destroy"


def exists_command(workload_id: str) -> str:
    """Exit status 0 while vmm.ko still has the VM (its device node)."""
    return f"test -e /dev/vmm/{vm_name(workload_id)}"


def report_lines(workload_id: str, memory: int) -> list[str]:
    """The ``@@SLAT`` lines that stand for the VM, up to its hold (no process: pid 0)."""
    events: list[dict[str, Any]] = [
        {"event": "vm", "vm": 0, "pid": 0, "cycle": 0, "name": vm_name(workload_id),
         "memory": memory},
        {"event": "hold"}]
    return ["@@SLAT " + json.dumps(ev) for ev in events]


def destroyed_lines() -> list[str]:
    """The lines after ``bhyvectl --destroy`` returned and the device is gone."""
    return ['@@SLAT {"event":"destroyed","vm":0}', '@@SLAT {"event":"done","status":0}']


def memory_map(memory: int) -> list[MemRange]:
    """What vmm.ko's ``mem_maps`` must hold after ``--set-mem``: libvmmapi's split."""
    return vm_setup_memory(memory)
