"""An independent encoder: builds NPT, EPT and stage-2 tables from a list of mappings.

Written apart from the walkers (it imports nothing from ``harness.formats``)
so that property tests compare two separate readings of the manuals.  Bit
values are spelled out here from the Intel SDM, the AMD APM and the Arm ARM.

>>> from harness.mem import read_u64
>>> mem = DictMem(size=1 << 24)
>>> end = build(mem, NptEncoder(), 0x1000, 4, [Spec(0x5000, 0x9000, 4096, True, True, False)])
>>> hex(read_u64(mem, 0x1000)), end
('0x2027', 20480)
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from harness.mem import DictMem

__all__ = ["Spec", "Encoder", "NptEncoder", "EptEncoder", "Stage2Encoder", "build",
           "LEVEL_OF_SIZE", "spec_lists", "ALL_PERMS", "observed"]

LEVEL_OF_SIZE = {1 << 12: 1, 1 << 21: 2, 1 << 30: 3}


@dataclass(frozen=True)
class Spec:
    """One mapping to encode, and what a walker must read back."""

    gpa: int
    hpa: int
    size: int
    r: bool
    w: bool
    x: bool
    memtype: int | None = None
    accessed: bool | None = None
    dirty: bool | None = None


class Encoder:
    """Entry builders of one format (levels are x86-numbered, 1 = 4 KiB)."""

    def table(self, child: int, level: int) -> int:
        """A non-leaf entry at *level* pointing to the table at *child*."""
        raise NotImplementedError

    def leaf(self, spec: Spec, level: int) -> int:
        """The leaf entry for *spec* at *level*."""
        raise NotImplementedError

    def expect(self, spec: Spec) -> tuple[object, ...]:
        """What the walker must report: gpa, hpa, size, r, w, x, level, memtype, A, D."""
        return (spec.gpa, spec.hpa, spec.size, spec.r, spec.w, spec.x,
                LEVEL_OF_SIZE[spec.size], spec.memtype, spec.accessed, spec.dirty)


@dataclass(frozen=True)
class NptEncoder(Encoder):
    """x86-64 long-mode entries; ``kvm`` adds KVM's bits 9-11 (bit 11 = present).

    ``Spec.memtype`` is the PAT index (AMD APM vol. 2, "PAT Indexing"): PWT is
    bit 3, PCD bit 4, PAT bit 7 of a 4 KiB PTE and bit 12 of a larger leaf.
    """

    kvm: bool = False

    def _soft(self) -> int:
        return 0xE00 if self.kvm else 0

    def table(self, child: int, level: int) -> int:
        return child | 0x7 | 0x20 | self._soft()             # P RW US A

    def leaf(self, spec: Spec, level: int) -> int:
        assert spec.r or not (spec.w or spec.x), "NPT cannot grant W or X without R"
        e = spec.hpa | 0x1 | self._soft()
        e |= 0x4 if spec.r else 0                               # US: the guest may use it
        e |= 0x2 if spec.w else 0
        e |= 0 if spec.x or not spec.r else 1 << 63             # NX
        e |= 0x20 if spec.accessed else 0
        e |= 0x40 if spec.dirty else 0
        e |= 0x80 if level > 1 else 0                           # PS
        pat = spec.memtype or 0
        e |= (0x8 if pat & 1 else 0) | (0x10 if pat & 2 else 0)  # PWT, PCD
        if pat & 4:
            e |= 0x80 if level == 1 else 0x1000                 # PAT
        return e

    def expect(self, spec: Spec) -> tuple[object, ...]:
        base = super().expect(spec)
        return base[:7] + (spec.memtype or 0, bool(spec.accessed), bool(spec.dirty))


@dataclass(frozen=True)
class EptEncoder(Encoder):
    """EPT entries: flavour "hw", "kvm" or "freebsd-emulated-ad"."""

    flavour: str = "hw"
    ad_enabled: bool = False

    def table(self, child: int, level: int) -> int:
        if self.flavour == "freebsd-emulated-ad":
            return child | 0x7 | 1 << 52 | 1 << 53
        if self.flavour == "kvm":
            return child | 0x7 | 1 << 11 | 1 << 8
        return child | 0x7

    def leaf(self, spec: Spec, level: int) -> int:
        mt = 6 if spec.memtype is None else spec.memtype
        e = spec.hpa | mt << 3 | (0x80 if level > 1 else 0)
        if self.flavour == "freebsd-emulated-ad":
            assert spec.r, "EMUL_V is the valid bit: an emulated-A/D leaf is readable"
            e |= 1 << 52 | (1 << 53 if spec.w else 0) | (0x4 if spec.x else 0) | 0x40
            e |= (0x1 if spec.accessed else 0) | (0x2 if spec.dirty else 0)
            return e
        e |= (0x1 if spec.r else 0) | (0x2 if spec.w else 0) | (0x4 if spec.x else 0)
        e |= (0x100 if spec.accessed else 0) | (0x200 if spec.dirty else 0)
        return e | (1 << 11 | 3 << 57 if self.flavour == "kvm" else 0)   # + host/MMU-writable

    def expect(self, spec: Spec) -> tuple[object, ...]:
        base = super().expect(spec)
        mt = 6 if spec.memtype is None else spec.memtype
        if self.flavour == "freebsd-emulated-ad":
            return base[:7] + (mt, bool(spec.accessed), bool(spec.dirty))
        if self.ad_enabled:
            return base[:7] + (mt, bool(spec.accessed), bool(spec.dirty))
        return base[:7] + (mt, None, None)


@dataclass(frozen=True)
class Stage2Encoder(Encoder):
    """arm64 stage-2 descriptors (4 KiB granule); XN "new" (54:53) or "old" (54)."""

    xn_encoding: str = "new"

    def table(self, child: int, level: int) -> int:
        return child | 0x3

    def leaf(self, spec: Spec, level: int) -> int:
        attr = 0xF if spec.memtype is None else spec.memtype
        e = spec.hpa | 0x1 | (0x2 if level == 1 else 0) | attr << 2 | 3 << 8
        e |= (1 << 6 if spec.r else 0) | (1 << 7 if spec.w else 0)
        e |= 1 << 10 if spec.accessed else 0
        if not spec.x:
            e |= 1 << 54 if self.xn_encoding == "old" else 2 << 53
        return e

    def expect(self, spec: Spec) -> tuple[object, ...]:
        base = super().expect(spec)
        attr = 0xF if spec.memtype is None else spec.memtype
        return base[:7] + (attr, bool(spec.accessed), None)


def build(mem: DictMem, enc: Encoder, root: int, top_level: int, specs: list[Spec],
          root_pages: int = 1) -> int:
    """Write tables for *specs* under *root*; returns the first free page after them.

    Table pages are taken in order from the page after the root's pages; each
    table page is written once, packed, at the end.
    """
    tables: dict[int, list[int]] = {root + 0x1000 * i: [0] * 512 for i in range(root_pages)}
    children: dict[tuple[int, int], int] = {}
    free = root + 0x1000 * root_pages
    for spec in specs:
        leaf_level = LEVEL_OF_SIZE[spec.size]
        assert leaf_level <= top_level, f"no {spec.size:#x} leaf under a level-{top_level} root"
        table, level = root, top_level
        while level > leaf_level:
            index = _index(spec.gpa, level, level == top_level)
            key = (level, spec.gpa >> (12 + 9 * (level - 1)))
            child = children.get(key)
            if child is None:
                child = children[key] = free
                free += 0x1000
                tables[child] = [0] * 512
                _set(tables, table, index, enc.table(child, level))
            table, level = child, level - 1
        _set(tables, table, _index(spec.gpa, level, level == top_level),
             enc.leaf(spec, level))
    for pa, entries in tables.items():
        mem.write(pa, struct.pack("<512Q", *entries))
    return free


def _index(gpa: int, level: int, top: bool) -> int:
    """The entry index of *gpa* at *level*; the top may span several pages."""
    idx = gpa >> (12 + 9 * (level - 1))
    return idx if top else idx & 511


def _set(tables: dict[int, list[int]], table: int, index: int, value: int) -> None:
    """Set entry *index* of the (possibly concatenated) table at *table*."""
    page = table + 0x1000 * (index // 512)
    assert tables[page][index % 512] == 0, f"entry {index} of {table:#x} written twice"
    tables[page][index % 512] = value


ALL_PERMS = [(r, w, x) for r in (False, True) for w in (False, True) for x in (False, True)]
Perm = tuple[bool, bool, bool]


def _indices(limit: int, most: int) -> st.SearchStrategy[set[int]]:
    """Distinct indices below *limit*, often small so that tables are shared."""
    small = st.integers(0, min(3, limit - 1))
    return st.sets(st.one_of(small, st.integers(0, limit - 1)), min_size=1, max_size=most)


@st.composite
def spec_lists(draw: Callable[..., object], gpa_bits: int, perms: list[Perm],
               memtypes: list[int | None], dirty_needs_accessed: bool = False,
               gib_leaves: bool = True) -> list[Spec]:
    """Non-overlapping 4 KiB / 2 MiB / 1 GiB mappings below 2**gpa_bits, random attributes."""
    specs: list[Spec] = []

    def one(gpa: int, size: int) -> None:
        r, w, x = draw(st.sampled_from(perms))  # type: ignore[misc]
        accessed, dirty = draw(st.booleans()), draw(st.booleans())
        if dirty_needs_accessed:
            accessed = accessed or dirty
        frame = draw(st.integers(0, (1 << 40) // size - 1))
        specs.append(Spec(gpa, frame * size, size, r, w, x, draw(st.sampled_from(memtypes)),
                          accessed, dirty))  # type: ignore[arg-type]

    for region in sorted(draw(_indices(1 << (gpa_bits - 30), 3))):  # type: ignore[call-overload]
        if gib_leaves and draw(st.booleans()):
            one(region << 30, 1 << 30)
            continue
        for chunk in sorted(draw(_indices(512, 3))):  # type: ignore[call-overload]
            base = region << 30 | chunk << 21
            if draw(st.booleans()):
                one(base, 1 << 21)
                continue
            for page in sorted(draw(_indices(512, 5))):  # type: ignore[call-overload]
                one(base | page << 12, 1 << 12)
    return specs


def observed(mappings: list[Any]) -> list[tuple[object, ...]]:
    """A walk's mappings in the form of :meth:`Encoder.expect`, in walk order."""
    return [(m.gpa, m.hpa, m.size, m.r, m.w, m.x, m.level, m.memtype, m.accessed, m.dirty)
            for m in mappings]
