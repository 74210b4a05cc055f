"""Hostile tables: every walker stays bounded, reports what it refused, and never hides a
failed read."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import MemoryReadError
from harness.formats import FORMATS, WalkLimits, WalkResult
from harness.formats.ept import EptParams
from harness.formats.npt import NptParams
from harness.formats.stage2 import Stage2Params
from harness.mem import DictMem

MEM = 1 << 24
ROOT = 0x10000
KINDS = {"reserved_bits", "frame_beyond_memory", "loop", "read_budget", "bad_entry",
         "shared_table"}

# name -> (format, params factory(levels, limits), table flags, 4 KiB leaf flags, levels)
CASES: dict[str, tuple[str, Callable[[int, WalkLimits], Any], int, int, int]] = {
    "npt4": ("npt", lambda n, lim: NptParams(levels=n, limits=lim), 0x7, 0x67, 4),
    "npt5": ("npt", lambda n, lim: NptParams(levels=n, limits=lim), 0x7, 0x67, 5),
    "npt-kvm": ("npt", lambda n, lim: NptParams(levels=n, flavour="kvm", limits=lim),
                0xE07, 0xE67, 4),
    "ept4": ("ept", lambda n, lim: EptParams(levels=n, limits=lim), 0x7, 0x37, 4),
    "ept5": ("ept", lambda n, lim: EptParams(levels=n, limits=lim), 0x7, 0x37, 5),
    "ept-kvm": ("ept", lambda n, lim: EptParams(levels=n, flavour="kvm", limits=lim),
                0x907, 0xB37, 4),
    "ept-freebsd": ("ept", lambda n, lim: EptParams(
        levels=n, flavour="freebsd-emulated-ad", limits=lim), 0x7 | 3 << 52, 0x77 | 3 << 52, 4),
    "stage2": ("stage2", lambda n, lim: Stage2Params(ia_bits=48, start_level=4 - n,
                                                       limits=lim), 0x3, 0x7C3 | 1 << 10, 4),
}


def run(case: str, mem: DictMem, limits: WalkLimits | None = None) -> WalkResult:
    """Walk *mem* from ROOT with the case's format and params."""
    fmt, params, _t, _l, levels = CASES[case]
    return FORMATS[fmt].walk(mem, ROOT, params(levels, limits or WalkLimits(mem_size=MEM)))


def fill(mem: DictMem, table: int, entry: int) -> None:
    """Every one of the 512 entries of *table* set to *entry*."""
    mem.write(table, struct.pack("<512Q", *[entry] * 512))


@pytest.mark.parametrize("case", CASES)
def test_self_reference(case: str) -> None:
    mem = DictMem(size=MEM)
    table = CASES[case][2]
    mem.write_u64(ROOT + 8 * 3, ROOT | table)
    res = run(case, mem)
    assert mem.reads == 1 and res.tables_read == 1 and res.mappings == []
    assert [(f.kind, f.table, f.index) for f in res.findings] == [("loop", ROOT, 3)]


@pytest.mark.parametrize("case", CASES)
def test_cycle_through_a_child(case: str) -> None:
    mem = DictMem(size=MEM)
    table = CASES[case][2]
    mem.write_u64(ROOT, 0x20000 | table)
    fill(mem, 0x20000, ROOT | table)                  # back to the root from every entry
    res = run(case, mem)
    assert mem.reads == 2 and res.mappings == []
    assert len(res.findings) == 512
    assert {(f.kind, f.table) for f in res.findings} == {("loop", 0x20000)}


def fan_out(case: str) -> DictMem:
    """Every entry of every level points at the same next table: 512**levels leaves."""
    _fmt, _p, table, leaf, levels = CASES[case]
    mem = DictMem(size=MEM)
    for k in range(levels - 1):
        fill(mem, ROOT + 0x1000 * k, (ROOT + 0x1000 * (k + 1)) | table)
    fill(mem, ROOT + 0x1000 * (levels - 1), 0x400000 | leaf)
    return mem


@pytest.mark.parametrize("case", CASES)
def test_fan_out_to_one_table_is_bounded_in_output(case: str) -> None:
    """Each page is read and walked once; the repeats stop at the leaf budget."""
    levels = CASES[case][4]
    mem = fan_out(case)
    res = run(case, mem, WalkLimits(max_tables=40, mem_size=MEM, max_leaves=5000))
    assert mem.reads == levels == res.tables_read          # each page read once
    assert res.findings[-1].kind == "read_budget" and "5000 leaves" in res.findings[-1].detail
    assert [f.kind for f in res.findings].count("read_budget") == 1
    assert res.leaf_count == 5000
    gpas = [m.gpa for m in res.mappings]
    assert gpas == sorted(gpas) and len(set(gpas)) == len(gpas)
    assert gpas[:512] == [i << 12 for i in range(512)]      # the leaf table, then repeats
    assert gpas[512] == 1 << 21 and all(m.hpa == 0x400000 for m in res.mappings)


@pytest.mark.parametrize("case", ["npt-kvm", "ept-kvm"])
def test_kvm_never_shares_a_table(case: str) -> None:
    """Every second reference of a table page is a shared_table finding (then repeated)."""
    levels = CASES[case][4]
    res = run(case, fan_out(case), WalkLimits(mem_size=MEM, max_findings=3000,
                                              max_leaves=1 << 22))
    shared = [f for f in res.findings if f.kind == "shared_table"]
    assert len(shared) == 3000 and res.findings[-1].kind == "read_budget"
    assert "3000 findings" in res.findings[-1].detail
    assert shared[0].level == 2 and shared[0].table == ROOT + 0x1000 * (levels - 2)
    assert shared[0].index == 1


@pytest.mark.parametrize("case", ["npt4", "ept4", "stage2"])
def test_shared_table_repeats_its_leaves_at_each_reference(case: str) -> None:
    """Hardware allows sharing: the leaves appear under every entry, read and walked once."""
    _fmt, _p, table, leaf, levels = CASES[case]
    mem = DictMem(size=MEM)
    pd = ROOT + 0x1000 * (levels - 2)
    for k in range(levels - 2):                               # one path down to the PD
        mem.write_u64(ROOT + 0x1000 * k, (ROOT + 0x1000 * (k + 1)) | table)
    for i in (0, 3, 7):
        mem.write_u64(pd + 8 * i, 0x30000 | table)           # three PDEs, one page table
    mem.write_u64(0x30000 + 8 * 5, 0x400000 | leaf)
    res = run(case, mem)
    assert res.findings == [] and mem.reads == levels
    assert [(m.gpa, m.hpa, m.table, m.index) for m in res.mappings] == \
        [((i << 21) + (5 << 12), 0x400000, 0x30000, 5) for i in (0, 3, 7)]


@pytest.mark.parametrize("case", CASES)
def test_frames_beyond_memory_are_not_followed(case: str) -> None:
    _fmt, _p, table, leaf, levels = CASES[case]
    mem = DictMem(size=MEM)
    fill(mem, ROOT, (MEM * 4) | table)
    res = run(case, mem)
    assert mem.reads == 1 and res.mappings == []
    assert len(res.findings) == 512
    assert {(f.kind, f.level) for f in res.findings} == {("frame_beyond_memory", levels)}


@pytest.mark.parametrize("case", CASES)
def test_root_beyond_memory(case: str) -> None:
    mem = DictMem(size=MEM)
    fmt, params, _t, _l, levels = CASES[case]
    res = FORMATS[fmt].walk(mem, MEM, params(levels, WalkLimits(mem_size=MEM)))
    assert mem.reads == 0 and [f.kind for f in res.findings] == ["frame_beyond_memory"]


@pytest.mark.parametrize("case", CASES)
def test_unreadable_table_raises(case: str) -> None:
    """Without mem_size the walker trusts the frame; the failed read must propagate."""
    mem = DictMem(size=MEM)
    mem.write_u64(ROOT, (MEM * 4) | CASES[case][2])
    with pytest.raises(MemoryReadError):
        run(case, mem, WalkLimits(mem_size=None))


class FailingMem(DictMem):
    """A DictMem whose page at *bad* cannot be read (a lost GDB session, say)."""

    def __init__(self, bad: int) -> None:
        super().__init__(size=MEM)
        self.bad = bad

    def read(self, addr: int, size: int) -> bytes:
        if addr <= self.bad < addr + size:
            raise MemoryReadError(addr, size, "injected")
        return super().read(addr, size)


@pytest.mark.parametrize("case", CASES)
def test_read_error_deep_in_the_tree_is_not_swallowed(case: str) -> None:
    mem = FailingMem(0x30000)
    table = CASES[case][2]
    mem.write_u64(ROOT, 0x20000 | table)
    mem.write_u64(ROOT + 8, 0x30000 | table)
    with pytest.raises(MemoryReadError):
        run(case, mem)


def test_budget_counts_every_table_walked() -> None:
    """A chain of distinct tables: the walk stops after max_tables, saying where."""
    mem = DictMem(size=MEM)
    for i in range(300):                       # 300 PML4Es, each to its own empty PDPT
        mem.write_u64(ROOT + 8 * i, (0x20000 + 0x1000 * i) | 0x7)
    res = run("npt4", mem, WalkLimits(max_tables=100, mem_size=MEM))
    assert mem.reads == 100
    [budget] = res.findings
    assert budget.kind == "read_budget" and budget.gpa == 99 << 39


HIGH = [0, 1 << 63, 3 << 52, 1 << 51, 1 << 48, 0xFFF << 52]


def garbage_entry(rnd: random.Random, pages: int) -> int:
    """Zero, a frame inside memory with random low and high bits, or pure noise."""
    roll = rnd.random()
    if roll < 0.6:
        return 0
    if roll < 0.95:
        return rnd.randrange(pages) << 12 | rnd.randrange(0x1000) | rnd.choice(HIGH)
    return rnd.getrandbits(64)


@pytest.mark.parametrize("case", CASES)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_garbage_tables_stay_bounded(case: str, seed: int) -> None:
    """Random entries, most pointing inside a small memory: the walk ends, never raises."""
    rnd = random.Random(seed)
    pages = 48
    size = pages * 0x1000
    mem = DictMem(size=size)
    for page in range(pages):
        entries = [garbage_entry(rnd, pages) for _ in range(512)]
        mem.write(page << 12, struct.pack("<512Q", *entries))
    fmt, params, _t, _l, levels = CASES[case]
    limits = WalkLimits(max_tables=60, mem_size=size)
    res = FORMATS[fmt].walk(mem, 0x1000, params(levels, limits))
    assert mem.reads == res.tables_read <= 60
    assert {f.kind for f in res.findings} <= KINDS
    assert [f.kind for f in res.findings].count("read_budget") <= 1
    ends = [(m.gpa, m.end) for m in res.mappings]
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False)), "overlap or unsorted"
    assert all(m.hpa + m.size <= size for m in res.mappings)
