"""The shared radix walk of x86-64-style page tables (NPT, EPT, arm64 stage-2).

All three formats are trees of 4 KiB tables of 512 little-endian 64-bit
entries, indexed by 9 bits of the input address per level.  They differ only
in how one entry is decoded, which an :class:`EntryCodec` says; this module
does the walking, the bounds (:class:`~harness.formats.base.WalkLimits`) and
the structural findings that do not depend on the format.

Levels use the x86 numbering of :class:`~harness.formats.base.Mapping`:
level 1 holds 4 KiB leaves, level 2 covers 2 MiB per entry, level 3 1 GiB,
level 4 512 GiB, level 5 256 TiB.  Entry *i* of a level-*L* table covers the
input addresses ``base + i << (12 + 9 * (L - 1))``.

Walk rules common to every format:

* each table page is read once with ``read_u64s(mem, pa, 512)``; a page
  reached again through another entry is walked again from the cached read,
  and every walk of a table counts against ``WalkLimits.max_tables``;
* a table that is already on the path from the root (self reference, cycle)
  is a ``loop`` finding and is not followed;
* a table or leaf frame at or beyond ``WalkLimits.mem_size`` is a
  ``frame_beyond_memory`` finding: the table is not followed, the leaf is not
  a mapping;
* a large leaf whose output address has bits set below its size is a
  ``reserved_bits`` finding (except bits the codec allows, e.g. x86 PAT);
* going over ``max_tables`` gives one ``read_budget`` finding and ends the walk;
* a failed read raises :class:`~harness.errors.MemoryReadError`.

>>> from harness.mem import DictMem
>>> m = DictMem(size=1 << 20)
>>> m.write_u64(0x1000, 0x2007); m.write_u64(0x2000, 0x3007)
>>> m.write_u64(0x3000, 0x4007); m.write_u64(0x4000, 0x5067)
>>> from harness.formats.npt import NptParams, walk
>>> r = walk(m, 0x1000, NptParams())
>>> [(hex(x.gpa), hex(x.hpa), x.r, x.w, x.x) for x in r.mappings]
[('0x0', '0x5000', True, True, True)]
"""

from __future__ import annotations

import gc
from collections.abc import Collection
from dataclasses import dataclass
from itertools import compress
from typing import NamedTuple

from harness.formats.base import Mapping, StructuralFinding, WalkLimits, WalkResult
from harness.mem import PAGE_SIZE, PhysMem, read_u64s

__all__ = ["Decoded", "EntryCodec", "RadixShape", "walk_radix", "level_shift",
           "TABLE", "LEAF", "SKIP", "PERM_R", "PERM_W", "PERM_X", "PERM_RWX"]

ENTRIES = 512
TABLE = "table"
LEAF = "leaf"
SKIP = "skip"            # present by the bits tested first, but not a mapping (KVM MMIO SPTE)
PERM_R, PERM_W, PERM_X = 1, 2, 4
PERM_RWX = PERM_R | PERM_W | PERM_X
_PERM_BOOLS = tuple((bool(p & PERM_R), bool(p & PERM_W), bool(p & PERM_X)) for p in range(8))


_new = tuple.__new__   # builds a Mapping from a full field tuple, no defaults

def level_shift(level: int) -> int:
    """log2 of the input-address span of one entry at *level* (1 -> 12, 2 -> 21 ...)."""
    return 12 + 9 * (level - 1)


class Decoded(NamedTuple):
    """What an entry's attribute bits say, independent of its output address.

    ``kind`` is :data:`TABLE`, :data:`LEAF`, :data:`SKIP` or a structural
    finding kind ("reserved_bits", "bad_entry").  ``perm`` is the R/W/X the
    entry grants (for a table: what it lets through to everything below).
    """

    kind: str
    perm: int = PERM_RWX
    memtype: int | None = None
    accessed: bool | None = None
    dirty: bool | None = None
    detail: str = ""


class EntryCodec:
    """How one format decodes an entry; subclasses override :meth:`decode`.

    The walker tests ``entry & present_mask`` first: entries without one of
    those bits are skipped without a call, unless they have a bit of
    ``alarm_mask`` (then :meth:`decode_absent` says what they are).
    """

    present_mask: int = 1       # an entry with none of these bits is not present
    alarm_mask: int = 0         # ... unless one of these is set: see decode_absent
    frame_mask: int = 0x000F_FFFF_FFFF_F000   # output address of a table or 4 KiB page
    large_low_ok: int = 0       # bits below a large leaf's size that are not reserved

    def decode(self, attr: int, level: int) -> Decoded:
        """Decode the attribute bits (the entry without ``frame_mask``) at *level*."""
        raise NotImplementedError

    def decode_absent(self, entry: int, level: int) -> Decoded:
        """A non-present entry with an ``alarm_mask`` bit set; SKIP = nothing to report."""
        return Decoded(SKIP)

    def leaf_memtype(self, entry: int, level: int, memtype: int | None) -> int | None:
        """The memory type of a leaf whose low frame bits are set (slow path only).

        :meth:`decode` sees the bits outside ``frame_mask``; a format that keeps
        an attribute in a large leaf's low frame bits (x86 PAT, bit 12) adds it here.
        """
        return memtype


@dataclass(frozen=True)
class RadixShape:
    """The shape of one tree: top level, root pages and which top entries to walk."""

    levels: int                               # level number of the root table (4 or 5 on x86)
    root_entries: int = ENTRIES               # entries in the root (> 512: concatenated pages)
    top_slots: Collection[int] | None = None  # root indices to walk; None = all


def _where(table: int, index: int) -> tuple[int, int]:
    """(page, index in page) of entry *index* of a table (several pages for a stage-2 root)."""
    return table + (index // ENTRIES) * PAGE_SIZE, index % ENTRIES


class _BudgetExceeded(Exception):
    """Raised inside the walker when ``max_tables`` is used up."""


class _Walker:
    """One walk's state: the result, the page cache and the budget."""

    def __init__(self, mem: PhysMem, codec: EntryCodec, limits: WalkLimits) -> None:
        self.mem = mem
        self.codec = codec
        self.limits = limits
        self.result = WalkResult()
        self.pages: dict[int, tuple[int, ...]] = {}
        self.cache: dict[int, dict[int, Decoded]] = {}
        self.walked = 0

    def read_table(self, pa: int, gpa: int, level: int) -> tuple[int, ...]:
        """The 512 entries at *pa*, read once per walk, charged to the budget."""
        if self.walked >= self.limits.max_tables:
            raise _BudgetExceeded(pa, gpa, level)
        self.walked += 1
        entries = self.pages.get(pa)
        if entries is None:
            entries = self.pages[pa] = read_u64s(self.mem, pa, ENTRIES)
            self.result.tables_read += 1
        return entries

    def finding(self, kind: str, gpa: int, level: int, table: int, index: int, raw: int,
                detail: str = "") -> None:
        """Record one structural finding."""
        self.result.findings.append(
            StructuralFinding(kind, gpa, level, table, index, raw, detail))

    def decoder(self, level: int) -> dict[int, Decoded]:
        """The memo of decoded attribute bits at *level* (filled by :meth:`decode`)."""
        return self.cache.setdefault(level, {})

    def decode(self, attr: int, level: int) -> Decoded:
        """The codec's decoding of *attr* at *level*, memoised for the walk."""
        memo = self.decoder(level)
        d = memo.get(attr)
        if d is None:
            d = memo[attr] = self.codec.decode(attr, level)
        return d

    def beyond(self, pa: int, size: int) -> bool:
        """Whether [pa, pa+size) reaches past the L1's memory."""
        limit = self.limits.mem_size
        return limit is not None and pa + size > limit

    def walk_table(self, pa: int, level: int, base: int, inherited: int,
                   path: frozenset[int], entries: tuple[int, ...],
                   slots: Collection[int] | None = None) -> None:
        """Walk one table whose entries are already read; recurse into tables.

        The common case (an aligned leaf inside memory, in a one-page table)
        is handled inline: this loop runs once per entry of every table.
        """
        codec = self.codec
        present, alarm, frame_mask = codec.present_mask, codec.alarm_mask, codec.frame_mask
        not_frame = ~frame_mask
        shift = level_shift(level)
        size = 1 << shift
        top = (1 << 64) if self.limits.mem_size is None else self.limits.mem_size - size
        odd = (size - 1) | (0 if len(entries) <= ENTRIES else -1)   # slow path if set
        memo = self.decoder(level)
        # Leaf attribute bits -> their (r, w, x, memtype, accessed, dirty) under this
        # table's `inherited`: one dict hit per leaf instead of a decode lookup, a kind
        # test and five attribute loads of the Decoded.
        leaves: dict[int, tuple[bool, bool, bool, int | None, bool | None, bool | None]] = {}
        append = self.result.mappings.append
        # compress() drops zero entries (most of a sparse table) before any Python code
        # runs; a zero entry has neither a present nor an alarm bit, so nothing is lost.
        for index, entry in compress(enumerate(entries), entries):
            if not entry & present:
                if entry & alarm:
                    self.absent(entry, pa, level, base + (index << shift), index)
                continue
            if slots is not None and index not in slots:
                continue
            attr = entry & not_frame
            fields = leaves.get(attr)
            if fields is None:
                d = memo.get(attr) or self.decode(attr, level)
                if d.kind != LEAF:
                    self.non_leaf(d, entry, base + (index << shift), level, pa, index,
                                  inherited, path)
                    continue
                fields = leaves[attr] = (*_PERM_BOOLS[d.perm & inherited],
                                         d.memtype, d.accessed, d.dirty)
            hpa = entry & frame_mask
            if hpa & odd or hpa > top:
                self.leaf(entry, memo[attr], base + (index << shift), level, pa, index,
                          inherited)
                continue
            r, w, x, memtype, accessed, dirty = fields
            # tuple.__new__ skips NamedTuple's Python-level __new__: 5x cheaper
            append(_new(Mapping, (base + (index << shift), hpa, size, r, w, x, level,
                                  entry, memtype, accessed, dirty, pa, index)))

    def non_leaf(self, d: Decoded, entry: int, gpa: int, level: int, table: int, index: int,
                 inherited: int, path: frozenset[int]) -> None:
        """A present entry that is not a leaf: follow a table, report a finding."""
        if d.kind == TABLE:
            self.table(entry & self.codec.frame_mask, gpa, level, table, index,
                       entry, inherited & d.perm, path)
        elif d.kind != SKIP:
            self.finding(d.kind, gpa, level, *_where(table, index), entry, d.detail)

    def absent(self, entry: int, table: int, level: int, gpa: int, index: int) -> None:
        """A non-present entry with alarm bits: report what the codec says."""
        d = self.codec.decode_absent(entry, level)
        if d.kind not in (SKIP, LEAF, TABLE):
            self.finding(d.kind, gpa, level, *_where(table, index), entry, d.detail)

    def leaf(self, entry: int, d: Decoded, gpa: int, level: int, table: int, index: int,
             inherited: int) -> None:
        """Check a leaf's output address and append its Mapping."""
        size = 1 << level_shift(level)
        hpa = entry & self.codec.frame_mask
        page, slot = _where(table, index)
        if hpa & (size - 1) & ~self.codec.large_low_ok:
            self.finding("reserved_bits", gpa, level, page, slot, entry,
                         "output address not aligned to the leaf size")
        elif self.beyond(hpa & ~(size - 1), size):
            self.finding("frame_beyond_memory", gpa, level, page, slot, entry,
                         f"leaf frame {hpa:#x}")
        else:
            r, w, x = _PERM_BOOLS[d.perm & inherited]
            self.result.mappings.append(Mapping(
                gpa, hpa & ~(size - 1), size, r, w, x, level, entry,
                self.codec.leaf_memtype(entry, level, d.memtype), d.accessed, d.dirty,
                page, slot))

    def table(self, child: int, gpa: int, level: int, table: int, index: int, entry: int,
              inherited: int, path: frozenset[int]) -> None:
        """Follow a table entry unless it loops or points beyond memory."""
        page, slot = _where(table, index)
        if child in path:
            self.finding("loop", gpa, level, page, slot, entry,
                         f"table {child:#x} is already on the path from the root")
        elif self.beyond(child, PAGE_SIZE):
            self.finding("frame_beyond_memory", gpa, level, page, slot, entry,
                         f"table frame {child:#x}")
        else:
            entries = self.read_table(child, gpa, level - 1)
            self.walk_table(child, level - 1, gpa, inherited, path | {child}, entries)


def _read_root(w: _Walker, root: int, shape: RadixShape) -> tuple[int, ...]:
    """All root entries, from one or several concatenated pages."""
    pages = max(1, -(-shape.root_entries // ENTRIES))
    entries: tuple[int, ...] = ()
    for i in range(pages):
        entries += w.read_table(root + i * PAGE_SIZE, 0, shape.levels)
    return entries[:shape.root_entries]


def walk_radix(mem: PhysMem, root: int, codec: EntryCodec, shape: RadixShape,
               limits: WalkLimits | None = None) -> WalkResult:
    """Walk the tree at physical *root*; mappings come out in ascending input order."""
    w = _Walker(mem, codec, limits or WalkLimits())
    pages = max(1, -(-shape.root_entries // ENTRIES))
    path = frozenset(root + i * PAGE_SIZE for i in range(pages))
    # Each leaf becomes a Mapping, a tuple subclass that the cyclic collector tracks for
    # good; a million of them set off repeated full collections that cost as much as
    # the walk itself.  A walk makes no reference cycles, so pause the collector and
    # restore its state after.
    collecting = gc.isenabled()
    gc.disable()
    try:
        if w.beyond(root, pages * PAGE_SIZE):
            w.finding("frame_beyond_memory", 0, shape.levels, root, 0, root, "root table")
            return w.result
        entries = _read_root(w, root, shape)
        w.walk_table(root, shape.levels, 0, PERM_RWX, path, entries, shape.top_slots)
    except _BudgetExceeded as e:
        pa, gpa, level = e.args
        w.finding("read_budget", gpa, level, pa, 0, 0,
                  f"more than {w.limits.max_tables} table walks; walk stopped")
    finally:
        if collecting:
            gc.enable()
    return w.result
