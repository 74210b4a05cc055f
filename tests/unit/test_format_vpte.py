"""DragonFly VPTE walker: golden vectors, an independent encoder, hostile images."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import MemoryReadError, RegistryLookupError, ScenarioError
from harness.formats import FORMATS
from harness.formats.base import WalkLimits
from harness.formats.vpte import ObjectImage, VPTEParams, translate, walk
from harness.mem import DictMem

# Bit values typed in again from sys/sys/vkernel.h (REFERENCE.md section 3.1), so that the
# tests do not trust the module's own tables.
X86 = {"V": 0x1, "RW": 0x2, "U": 0x4, "A": 0x20, "M": 0x40, "PS": 0x80, "NX": 1 << 63}
OLD = {"V": 0x1, "PS": 0x2, "R": 0x4, "W": 0x8, "X": 0x10, "A": 0x20, "M": 0x40}
MIB = 1 << 20


def params(layout: str = "x86", **kw: object) -> VPTEParams:
    """Walk parameters with an image of *mem_size* bytes (default 64 MiB)."""
    mem_size = kw.pop("mem_size", 64 * MIB)
    max_tables = kw.pop("max_tables", 1 << 16)
    budgets = {k: kw.pop(k) for k in ("max_leaves", "max_findings") if k in kw}
    return VPTEParams(layout=layout, limits=WalkLimits(max_tables=max_tables, **budgets,  # type: ignore[arg-type]
                                                      mem_size=mem_size), **kw)  # type: ignore[arg-type]


def summary(res: object) -> list[tuple[int, int, int, bool, bool, bool, int]]:
    """(gpa, hpa, size, r, w, x, level) of every mapping of a walk."""
    return [(m.gpa, m.hpa, m.size, m.r, m.w, m.x, m.level) for m in res.mappings]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- golden vectors, x86 layout

def test_master_ps_is_a_linear_map() -> None:
    mem = DictMem(size=8 * MIB)
    res = walk(mem, 0x10000 | 0xE3, params(base=0x200000000, size=4 * MIB, mem_size=8 * MIB))
    assert summary(res) == [(0x200000000, 0x10000, 4 * MIB, True, True, True, 5)]
    assert res.mappings[0].dirty and res.mappings[0].accessed
    assert res.findings == [] and res.tables_read == 0 and mem.reads == 0
    off, perms = translate(mem, 0x100E3, 0x200123456, params(base=0x200000000, size=4 * MIB))
    assert off == 0x133456 and (perms.r, perms.w, perms.x, perms.m) == (True, True, True, True)
    assert perms.level == 5


def test_master_ps_beyond_the_image_is_clipped_and_reported() -> None:
    res = walk(DictMem(size=MIB), 0x83, params(size=4 * MIB, mem_size=MIB))
    assert summary(res) == [(0, 0, MIB, True, True, True, 5)]
    assert [(f.kind, f.gpa) for f in res.findings] == [("frame_beyond_memory", MIB)]
    assert translate(DictMem(size=MIB), 0x83, 0x100000, params(size=4 * MIB, mem_size=MIB)) \
        is None


def four_level_x86() -> DictMem:
    """VA 0x80_4020_3000: indices 1/1/1/3; tables at 0x1000..0x4000 (master 0x1003)."""
    mem = DictMem(size=64 * MIB)
    mem.write_u64(0x1000 + 8 * 1, 0x2003)
    mem.write_u64(0x2000 + 8 * 1, 0x3003)
    mem.write_u64(0x3000 + 8 * 1, 0x4003)
    mem.write_u64(0x4000 + 8 * 3, 0x7063)                  # V|RW|A|M -> 0x7000
    mem.write_u64(0x4000 + 8 * 4, 0x8000000000008021)      # V|A|NX, read-only -> 0x8000
    mem.write_u64(0x3000 + 8 * 5, 0x8000000000200083)      # 2 MiB PS|RW|V|NX at 0x80_40a0_0000
    return mem


def test_four_level_walk() -> None:
    res = walk(four_level_x86(), 0x1003, params(base=0x10000000000))
    assert summary(res) == [
        (0x18040203000, 0x7000, 0x1000, True, True, True, 1),
        (0x18040204000, 0x8000, 0x1000, True, False, False, 1),
        (0x18040A00000, 0x200000, 0x200000, True, True, False, 2),
    ]
    first = res.mappings[0]
    assert (first.raw, first.table, first.index, first.dirty) == (0x7063, 0x4000, 3, True)
    assert res.mappings[1].dirty is False and res.tables_read == 4 and res.findings == []


def test_four_level_translate() -> None:
    mem, p = four_level_x86(), params(base=0x10000000000)
    off, perms = translate(mem, 0x1003, 0x18040203ABC, p)
    assert off == 0x7ABC and perms.vpte == 0x7063 and (perms.w, perms.m) == (True, True)
    assert translate(mem, 0x1003, 0x8040203000, p) is None            # below the base
    off, perms = translate(mem, 0x1003, 0x18040BFF123, p)
    assert off == 0x3FF123 and perms.level == 2 and not perms.x
    assert translate(mem, 0x1003, 0x18040205000, p) is None          # empty PTE
    assert translate(mem, 0x1002, 0x18040203000, p) is None          # master not VPTE_V


def test_intermediate_rw_and_nx_narrow_the_path() -> None:
    mem = four_level_x86()
    mem.write_u64(0x2000 + 8 * 1, 0x8000000000003001)  # PDPT-level entry: V, no RW, NX
    res = walk(mem, 0x1003, params())
    assert [(m.w, m.x) for m in res.mappings] == [(False, False)] * 3
    _, perms = translate(mem, 0x1003, 0x8040203000, params())
    assert (perms.w, perms.x, perms.m) == (False, False, True)


def test_nx_bit_is_a_parameter() -> None:
    mem = four_level_x86()
    res = walk(mem, 0x1003, params(nx_bit=None))
    assert [m.x for m in res.mappings] == [True, True, True]
    mem.write_u64(0x4000 + 8 * 3, 0x7063 | 1 << 62)
    assert walk(mem, 0x1003, params(nx_bit=62)).mappings[0].x is False


# ---------------------------------------------------------------- golden vectors, old layout

def test_old_layout_vectors() -> None:
    mem = DictMem(size=64 * MIB)
    mem.write_u64(0x1000, 0x201D)                  # V|R|W|X -> 0x2000
    mem.write_u64(0x2000, 0x301D)
    mem.write_u64(0x3000, 0x401D)
    mem.write_u64(0x4000 + 8 * 2, 0x707D)          # V|R|W|X|A|M -> 0x7000
    mem.write_u64(0x3000 + 8 * 1, 0x600007)        # V|PS|R: 2 MiB read-only, no exec
    res = walk(mem, 0x101D, params("old"))
    assert summary(res) == [(0x2000, 0x7000, 0x1000, True, True, True, 1),
                            (0x200000, 0x600000, 0x200000, True, False, False, 2)]
    assert res.mappings[0].dirty and res.mappings[0].accessed
    off, perms = translate(mem, 0x101D, 0x2010, params("old"))
    assert off == 0x7010 and (perms.r, perms.w, perms.x, perms.m) == (True, True, True, True)
    linear = walk(mem, 0x1F, params("old", size=2 * MIB))
    assert summary(linear) == [(0, 0, 2 * MIB, True, True, True, 5)]
    # The same master read with the x86 layout is a table pointer at 0, not a linear map.
    assert walk(mem, 0x1F, params("x86", size=2 * MIB)).tables_read == 1


def test_nx_bit_must_be_a_high_bit() -> None:
    with pytest.raises(ScenarioError):
        walk(DictMem(size=MIB), 0x83, params(nx_bit=12, size=MIB))
    with pytest.raises(RegistryLookupError, match="valid: old, x86"):
        walk(DictMem(size=MIB), 0x83, params("vax", size=MIB))


def test_registered() -> None:
    fmt = FORMATS["vpte"]
    assert fmt.walk is walk and fmt.params is VPTEParams


# ---------------------------------------------------------------- an independent encoder

SHIFT = {4: 39, 3: 30, 2: 21, 1: 12}   # VA shift of the index used at each table level


@dataclass
class Encoder:
    """Builds VPTE tables for leaves given as index paths; keeps the expected result."""

    layout: str
    mem: DictMem = field(default_factory=lambda: DictMem(size=1 << 41))
    next_table: int = 0x1000
    tables: dict[tuple[int, ...], int] = field(default_factory=dict)
    grants: dict[tuple[int, ...], tuple[bool, bool]] = field(default_factory=dict)
    leaves: dict[tuple[int, ...], tuple[int, dict[str, bool]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tables[()] = self.alloc()

    def alloc(self) -> int:
        table, self.next_table = self.next_table, self.next_table + 0x1000
        return table

    def bits(self, w: bool, x: bool, r: bool = True) -> int:
        if self.layout == "x86":
            return X86["V"] | (X86["RW"] if w else 0) | (0 if x else X86["NX"])
        return (OLD["V"] | (OLD["R"] if r else 0) | (OLD["W"] if w else 0)
                | (OLD["X"] if x else 0))

    def master(self) -> int:
        return self.tables[()] | self.bits(True, True)

    def free(self, path: tuple[int, ...]) -> bool:
        if any(path[:n] in self.leaves for n in range(1, len(path) + 1)):
            return False
        return not any(t[:len(path)] == path for t in list(self.tables) + list(self.leaves))

    def add(self, path: tuple[int, ...], frame: int, flags: dict[str, bool],
            inter: tuple[bool, bool]) -> None:
        """A leaf at level 5 - len(path) mapping to image offset *frame*."""
        if not self.free(path):
            return
        for n in range(1, len(path)):
            if path[:n] not in self.tables:
                self.tables[path[:n]] = self.alloc()
                self.grants[path[:n]] = inter
                self.mem.write_u64(self.tables[path[:n - 1]] + 8 * path[n - 1],
                                   self.tables[path[:n]] | self.bits(*inter))
        self.leaves[path] = (frame, flags)
        self.mem.write_u64(self.tables[path[:-1]] + 8 * path[-1], frame | self.leaf_bits(
            len(path), flags))

    def leaf_bits(self, depth: int, f: dict[str, bool]) -> int:
        t = X86 if self.layout == "x86" else OLD
        ps = t["PS"] if depth < 4 else 0
        return (self.bits(f["w"], f["x"], f["r"]) | ps | (t["A"] if f["a"] else 0)
                | (t["M"] if f["m"] else 0))

    def expected(self, base: int) -> list[tuple[int, int, int, bool, bool, bool, int]]:
        out = []
        for path, (frame, f) in self.leaves.items():
            va = base + sum(i << SHIFT[4 - n] for n, i in enumerate(path))
            gw = [self.grants[path[:n]] for n in range(1, len(path))]
            r = f["r"] or self.layout == "x86"
            w = f["w"] and all(g[0] for g in gw)
            x = f["x"] and all(g[1] for g in gw)
            out.append((va, frame, 1 << SHIFT[5 - len(path)], r, w, x, 5 - len(path)))
        return sorted(out)


leaf_st = st.tuples(
    st.lists(st.integers(0, 3), min_size=1, max_size=4),             # index path: level 4..1
    st.integers(0x100, 0xFFFFF).map(lambda p: p << 12),               # leaf frame
    st.fixed_dictionaries({k: st.booleans() for k in "rwxam"}),
    st.tuples(st.booleans(), st.booleans()))                          # intermediate w, x


@settings(max_examples=150, deadline=None)
@given(layout=st.sampled_from(["x86", "old"]), leaves=st.lists(leaf_st, max_size=12),
       base=st.integers(0, 0xFF).map(lambda b: b << 40), probe=st.integers(0, 0xFFFFF))
def test_walk_and_translate_match_the_encoder(layout: str, leaves: list, base: int,
                                              probe: int) -> None:
    enc = Encoder(layout)
    for path, frame, flags, inter in leaves:
        enc.add(tuple(path), frame, flags, inter)
    p = params(layout, base=base, mem_size=1 << 41)
    res = walk(enc.mem, enc.master(), p)
    want = enc.expected(base)
    assert summary(res) == want and res.findings == []
    for va, hpa, size, r, w, x, level in want:
        got = translate(enc.mem, enc.master(), va + probe % size, p)
        assert got is not None
        off, perms = got
        assert off == hpa + probe % size
        assert (perms.r, perms.w, perms.x, perms.level) == (r, w, x, level)
    spans = [(va, va + size) for va, _, size, *_ in want]
    hole = base + (probe << 12)
    if not any(lo <= hole < hi for lo, hi in spans):
        assert translate(enc.mem, enc.master(), hole, p) is None


# ---------------------------------------------------------------- hostile images

def test_self_referencing_table_is_a_loop() -> None:
    mem = DictMem(size=MIB)
    mem.write_u64(0x1000, 0x1003)                    # top table entry 0 points at itself
    mem.write_u64(0x1000 + 8, 0x2003)                # entry 1 -> 0x2000 ...
    mem.write_u64(0x2000, 0x1003)                    # ... whose entry 0 points back up
    res = walk(mem, 0x1003, params(mem_size=MIB))
    assert sorted((f.kind, f.gpa, f.level) for f in res.findings) == [
        ("loop", 0, 4), ("loop", 1 << 39, 3)]
    assert res.mappings == [] and res.tables_read == 2


def test_frames_beyond_the_image_are_findings_not_reads() -> None:
    mem = DictMem(size=MIB)                          # reading past 1 MiB would raise
    mem.write_u64(0x1000, 0x40000003)                # table at 1 GiB
    mem.write_u64(0x1008, 0x2003)
    mem.write_u64(0x2000, 0x3003)
    mem.write_u64(0x3000, 0x4003)
    mem.write_u64(0x4000, 0x200003)                  # 4 KiB leaf at 2 MiB
    mem.write_u64(0x4008, 0x5003)                    # 4 KiB leaf inside
    res = walk(mem, 0x1003, params(mem_size=MIB))
    assert [(f.kind, f.gpa) for f in res.findings] == [
        ("frame_beyond_memory", 0), ("frame_beyond_memory", 1 << 39)]
    assert summary(res) == [((1 << 39) + 0x1000, 0x5000, 0x1000, True, True, True, 1)]
    assert translate(mem, 0x1003, 1 << 39, params(mem_size=MIB)) is None
    assert translate(mem, 0x1003, 0, params(mem_size=MIB)) is None


def test_unknown_image_size_raises_on_a_failed_read() -> None:
    mem = DictMem(size=MIB)
    mem.write_u64(0x1000, 0x40000003)
    with pytest.raises(MemoryReadError):
        walk(mem, 0x1003, params(mem_size=None))
    with pytest.raises(MemoryReadError):
        translate(mem, 0x1003, 0, params(mem_size=None))


def fan_out() -> DictMem:
    """Every entry of every level points at one next table: 512**4 pages if followed."""
    mem = DictMem(size=MIB)
    for table, child in ((0x1000, 0x2003), (0x2000, 0x3003), (0x3000, 0x4003),
                         (0x4000, 0x5063)):
        for i in range(512):
            mem.write_u64(table + 8 * i, child)      # every entry shares one child
    mem.reads = 0
    return mem


def test_a_shared_table_is_walked_once_and_reported() -> None:
    mem = fan_out()
    res = walk(mem, 0x1003, params(mem_size=MIB))
    assert mem.reads == 4 and res.tables_read == 4
    assert len(res.mappings) == 512                  # the leaf table, under its first parent
    assert {m.gpa >> 21 for m in res.mappings} == {0}
    kinds = [f.kind for f in res.findings]
    assert kinds == ["shared_table"] * (3 * 511)     # every later reference, at every level
    assert {(f.table, f.index) for f in res.findings if f.level == 2} == \
        {(0x3000, i) for i in range(1, 512)}


def test_the_leaf_and_finding_budgets_end_the_walk() -> None:
    res = walk(fan_out(), 0x1003, params(mem_size=MIB, max_leaves=100))
    assert len(res.mappings) == 100 and res.findings[-1].kind == "read_budget"
    assert "100 leaves" in res.findings[-1].detail
    res = walk(fan_out(), 0x1003, params(mem_size=MIB, max_findings=10))
    assert [f.kind for f in res.findings] == ["shared_table"] * 10 + ["read_budget"]


def test_the_table_budget_ends_the_walk() -> None:
    mem = DictMem(size=MIB)
    for t in range(1, 60):                           # a chain of distinct tables
        mem.write_u64(t * 0x1000, (t + 1) * 0x1000 | 0x3)
    res = walk(mem, 0x1003, params(mem_size=MIB, max_tables=3))
    assert res.tables_read == 3 and [f.kind for f in res.findings] == ["read_budget"]


def test_region_size_bounds_the_walk() -> None:
    mem = four_level_x86()
    mem.reads = 0
    res = walk(mem, 0x1003, params(size=1 << 39))    # only the first top-level slot
    assert res.mappings == [] and res.tables_read == 1 and mem.reads == 1


# ---------------------------------------------------------------- the object image reader

def test_object_image_reads_scattered_pages() -> None:
    flat = four_level_x86()
    phys = DictMem(size=64 * MIB)
    pages = {}
    for k, off in enumerate((0x1000, 0x2000, 0x3000, 0x4000)):
        pages[off] = 0x900000 - k * 0x3000           # descending, non-contiguous L1 pages
        phys.write(pages[off], flat.read(off, 0x1000))
    img = ObjectImage(phys, pages, size=64 * MIB)
    assert summary(walk(img, 0x1003, params())) == summary(walk(flat, 0x1003, params()))
    assert img.read(0x1FFC, 8) == flat.read(0x1FFC, 8)          # crosses an object page
    assert img.resolve(None, 0x3FF8) == 0x900000 - 2 * 0x3000
    assert img.resolve(None, 0x5000) is None
    with pytest.raises(MemoryReadError):
        img.read(0x4FFC, 8)                                     # 0x5000 is not resident
    with pytest.raises(MemoryReadError):
        img.read(64 * MIB - 4, 8)
    del img.pages[0x4000]
    with pytest.raises(MemoryReadError):
        walk(img, 0x1003, params())                             # never an empty table
