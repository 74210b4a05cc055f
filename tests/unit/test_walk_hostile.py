"""Hostile table classes, one walk each in a child process under resource limits.

Every class of crafted tables that once exhausted memory (issue: walkers bounded
in tables read but not in output) is walked with the default limits in a forked
child whose address space may grow by at most 200 MB (``RLIMIT_AS``) and whose
CPU time is at most 2 s (``RLIMIT_CPU``: the kernel kills it past that).  The
child reports what the walk said; the findings must say why it stopped.
"""

from __future__ import annotations

import multiprocessing
import random
import resource
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pytest

from harness.formats import FORMATS, WalkLimits
from harness.formats.ept import EptParams
from harness.formats.npt import NptParams
from harness.formats.stage2 import Stage2Params
from harness.formats.vpte import VPTEParams
from harness.mem import DictMem

MEM = 1 << 24
ROOT = 0x10000
MB = 1 << 20
CPU_SECONDS = 2
GROWTH = 200 * MB

# format -> (params(limits), table flags, 4 KiB leaf flags, levels, root argument)
FORMAT_CASES: dict[str, tuple[Callable[[WalkLimits], Any], int, int, int, int]] = {
    "npt": (lambda lim: NptParams(limits=lim), 0x7, 0x67, 4, ROOT),
    "npt-kvm": (lambda lim: NptParams(flavour="kvm", limits=lim), 0xE07, 0xE67, 4, ROOT),
    "ept": (lambda lim: EptParams(limits=lim), 0x7, 0x37, 4, ROOT),
    "stage2": (lambda lim: Stage2Params(ia_bits=48, start_level=0, limits=lim), 0x3,
               0x7C3 | 1 << 10, 4, ROOT),
    # vpte: the master PDE points at the root table; image offsets are the DictMem's
    "vpte": (lambda lim: VPTEParams(limits=lim), 0x3, 0x63, 4, ROOT | 0x3),
}


def fill(mem: DictMem, table: int, entries: list[int]) -> None:
    mem.write(table, struct.pack("<512Q", *entries))


def fan_out(table: int, leaf: int, levels: int) -> DictMem:
    """Every entry of every level points at the next table, the last at one page."""
    mem = DictMem(size=MEM)
    for k in range(levels - 1):
        fill(mem, ROOT + 0x1000 * k, [(ROOT + 0x1000 * (k + 1)) | table] * 512)
    fill(mem, ROOT + 0x1000 * (levels - 1), [0x400000 | leaf] * 512)
    return mem


def fan_out_cycle(table: int, leaf: int, levels: int) -> DictMem:
    """Fan-out whose level-2 table points back at the root from every entry."""
    mem = fan_out(table, leaf, levels)
    fill(mem, ROOT + 0x1000 * (levels - 2), [ROOT | table] * 512)
    return mem


def scattered(table: int, leaf: int, levels: int) -> DictMem:
    """256 pages of pointers at each other and of leaves: millions of paths."""
    rnd = random.Random(12)
    mem = DictMem(size=MEM)
    pages = [ROOT + 0x1000 * i for i in range(256)]
    for pa in pages:
        fill(mem, pa, [rnd.choice(pages) | table if rnd.random() < 0.7
                       else (rnd.randrange(0x400, 0x800) << 12) | leaf for _ in range(512)])
    return mem


def self_loops(table: int, leaf: int, levels: int) -> DictMem:
    """256 pages whose every entry points at its own page: loops everywhere."""
    mem = DictMem(size=MEM)
    for i in range(256):
        pa = ROOT + 0x1000 * i
        fill(mem, pa, [pa | table] * 512 if i == 0 else
             [(ROOT + 0x1000 * (i + 1) if i < 255 else ROOT) | table] * 512)
    return mem


HOSTILE: dict[str, Callable[[int, int, int], DictMem]] = {
    "fan-out": fan_out, "fan-out+cycle": fan_out_cycle, "scattered": scattered,
    "loops": self_loops,
}


def _walk_limited(conn: Connection, fmt: str, mem: DictMem, root: int, params: Any) -> None:
    """In the child: cap CPU and address space, walk, send back what the walk said."""
    vm = _address_space()
    resource.setrlimit(resource.RLIMIT_AS, (vm + GROWTH, vm + GROWTH))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 1))
    try:
        res = FORMATS[fmt].walk(mem, root, params)
        kinds: dict[str, int] = {}
        for f in res.findings:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        conn.send(("ok", res.leaf_count, kinds, res.tables_read,
                   res.findings[-1].detail if res.findings else ""))
    except MemoryError:
        conn.send(("MemoryError",))
    finally:
        conn.close()


def _address_space() -> int:
    """This process's virtual size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def bounded_walk(fmt: str, mem: DictMem, root: int, params: Any) -> tuple[Any, ...]:
    """Walk in a forked child under the limits; the child's report, or why it died."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_walk_limited, args=(child, fmt, mem, root, params))
    proc.start()
    child.close()
    try:
        got = parent.recv() if parent.poll(60) else ("no answer",)
    except EOFError:        # the child died before it answered
        got = ("no answer",)
    proc.join(10)
    if proc.exitcode not in (0, None):
        return (f"child died with status {proc.exitcode} (SIGXCPU = -24: over "
                f"{CPU_SECONDS} s of CPU)",)
    return tuple(got)


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("case", FORMAT_CASES)
def test_hostile_tables_stay_within_time_and_memory(case: str, hostile: str) -> None:
    params, table, leaf, levels, root = FORMAT_CASES[case]
    fmt = case.split("-")[0]
    mem = HOSTILE[hostile](table, leaf, levels)
    got = bounded_walk(fmt, mem, root, params(WalkLimits(mem_size=MEM)))
    assert got[0] == "ok", got
    _, leaves, kinds, tables_read, last = got
    limits = WalkLimits()
    assert leaves <= limits.max_leaves and tables_read <= MEM // 0x1000   # each page once
    assert sum(kinds.values()) <= limits.max_findings + 1
    # the findings say why the walk was cut short, or the tables were finite after all
    if hostile == "fan-out":
        assert kinds.get("read_budget", 0) + kinds.get("shared_table", 0) > 0, kinds
    if hostile in ("fan-out+cycle", "loops"):
        assert kinds.get("loop", 0) > 0, kinds
    if kinds.get("read_budget"):
        assert "walk stopped" in last


def test_the_limits_catch_a_runaway_walk() -> None:
    """The child's limits are real: an unbounded allocation dies as MemoryError."""
    got = bounded_walk("npt", _Hog(), ROOT, NptParams())
    assert got == ("MemoryError",)


class _Hog(DictMem):
    """A memory whose first read allocates without bound."""

    def read(self, addr: int, size: int) -> bytes:
        hoard = []
        while True:
            hoard.append(bytearray(64 * MB))
