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

* a table is walked a table at a time: its page is read once
  (``mem.read(pa, 4096)``), its 512 entries are decoded in bulk with numpy
  (the codec is asked once per distinct attribute pattern), and the leaves
  become rows of :class:`~harness.formats.leaves.Leaves`, not objects;
* a table page reached again at the same level (with the same permissions
  from above) is not walked again: its leaves and findings are repeated at
  the new input address from the first walk.  A codec whose hypervisor never
  shares table pages (``shares_tables = False``, KVM's) reports each second
  reference as a ``shared_table`` finding.  Every walk of a table counts
  against ``WalkLimits.max_tables``;
* a table that is already on the path from the root (self reference, cycle)
  is a ``loop`` finding and is not followed (a repeated table keeps the
  findings of its first walk);
* a table or leaf frame at or beyond ``WalkLimits.mem_size`` is a
  ``frame_beyond_memory`` finding: the table is not followed, the leaf is not
  a mapping;
* a large leaf whose output address has bits set below its size is a
  ``reserved_bits`` finding (except bits the codec allows, e.g. x86 PAT);
* going over ``max_tables`` table walks, ``max_leaves`` leaves or
  ``max_findings`` findings gives one ``read_budget`` finding and ends the
  walk: the output is bounded as the reads are;
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

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from harness.formats.base import StructuralFinding, WalkLimits, WalkResult
from harness.formats.leaves import U64, Leaves, pack_flags
from harness.mem import PAGE_SIZE, PhysMem

__all__ = ["Decoded", "EntryCodec", "RadixShape", "walk_radix", "level_shift",
           "TABLE", "LEAF", "SKIP", "PERM_R", "PERM_W", "PERM_X", "PERM_RWX"]

ENTRIES = 512
TABLE = "table"
LEAF = "leaf"
SKIP = "skip"            # present by the bits tested first, but not a mapping (KVM MMIO SPTE)
PERM_R, PERM_W, PERM_X = 1, 2, 4
PERM_RWX = PERM_R | PERM_W | PERM_X
_LEAF, _SKIP, _OTHER = 0, 1, 2      # entry classes in the bulk decode


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
    ``shares_tables`` is False where the hypervisor never points two entries
    at one table page (then a second reference is a ``shared_table`` finding).
    """

    present_mask: int = 1       # an entry with none of these bits is not present
    alarm_mask: int = 0         # ... unless one of these is set: see decode_absent
    frame_mask: int = 0x000F_FFFF_FFFF_F000   # output address of a table or 4 KiB page
    large_low_ok: int = 0       # bits below a large leaf's size that are not reserved
    shares_tables: bool = True  # whether two entries may point at one table page

    def decode(self, attr: int, level: int) -> Decoded:
        """Decode the attribute bits (the entry without ``frame_mask``) at *level*."""
        raise NotImplementedError

    def decode_absent(self, entry: int, level: int) -> Decoded:
        """A non-present entry with an ``alarm_mask`` bit set; SKIP = nothing to report."""
        return Decoded(SKIP)

    def leaf_memtype(self, entry: int, level: int, memtype: int | None) -> int | None:
        """The memory type of a large leaf, given its entry (called for leaves above level 1).

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
    """Raised inside the walker when a budget is used up (the finding is recorded)."""


class _Span(NamedTuple):
    """What one walk of a table added: leaf chunks [c0, c1), findings [f0, f1), at *base*."""

    c0: int
    c1: int
    f0: int
    f1: int
    base: int
    lo: int = -1          # rows [lo, hi) of the one chunk c0 (a level-1 table of a batch)
    hi: int = -1


class _Walker:
    """One walk's state: the leaf chunks, the findings, the page cache and the budgets."""

    def __init__(self, mem: PhysMem, codec: EntryCodec, limits: WalkLimits) -> None:
        self.mem = mem
        self.codec = codec
        self.limits = limits
        self.chunks: list[Leaves] = []
        self.leaves = 0
        self.findings: list[StructuralFinding] = []
        self.pages: dict[int, U64] = {}
        self.tables_read = 0
        self.walked = 0
        self.stopped = False
        self.memo: dict[int, dict[int, Decoded]] = {}
        self.done: dict[tuple[int, int, int], _Span] = {}
        self.seen: set[tuple[int, int]] = set()
        self.not_frame = np.uint64(~codec.frame_mask & (2**64 - 1))

    # -- budgets and records -------------------------------------------------------------

    def read_table(self, pa: int, gpa: int, level: int) -> U64:
        """The 512 entries at *pa*, read once per walk, each walk charged to the budget."""
        if self.walked >= self.limits.max_tables:
            self.stop(gpa, level, pa, f"more than {self.limits.max_tables} table walks")
        self.walked += 1
        entries = self.pages.get(pa)
        if entries is None:
            data = self.mem.read(pa, PAGE_SIZE)
            entries = self.pages[pa] = _u64(data)
            self.tables_read += 1
        return entries

    def stop(self, gpa: int, level: int, table: int, why: str) -> None:
        """Record the one ``read_budget`` finding and end the walk."""
        if self.stopped:
            raise _BudgetExceeded
        self.stopped = True
        self.findings.append(StructuralFinding("read_budget", gpa, level, table, 0, 0,
                                               f"{why}; walk stopped"))
        raise _BudgetExceeded

    def finding(self, kind: str, gpa: int, level: int, table: int, index: int, raw: int,
                detail: str = "") -> None:
        """Record one structural finding (within the findings budget)."""
        if len(self.findings) >= self.limits.max_findings:
            self.stop(gpa, level, table, f"more than {self.limits.max_findings} findings")
        self.findings.append(StructuralFinding(kind, gpa, level, table, index, raw, detail))

    def add_leaves(self, part: Leaves) -> None:
        """Append a chunk of leaves (within the leaves budget)."""
        room = self.limits.max_leaves - self.leaves
        if len(part) > room:
            if room > 0:
                self.chunks.append(part.rows(0, room))
                self.leaves += room
            self.stop(int(part.gpa[max(room, 0)]), int(part.level[0]), int(part.table[0]),
                      f"more than {self.limits.max_leaves} leaves")
        self.chunks.append(part)
        self.leaves += len(part)

    def decode(self, attr: int, level: int) -> Decoded:
        """The codec's decoding of *attr* at *level*, memoised for the walk."""
        memo = self.memo.setdefault(level, {})
        d = memo.get(attr)
        if d is None:
            d = memo[attr] = self.codec.decode(attr, level)
        return d

    def beyond(self, pa: int, size: int) -> bool:
        """Whether [pa, pa+size) reaches past the L1's memory."""
        limit = self.limits.mem_size
        return limit is not None and pa + size > limit

    # -- tables ---------------------------------------------------------------------------

    def walk_tables(self, jobs: list[_Job], level: int, entries: U64,
                    slots: Collection[int] | None = None) -> None:
        """Walk tables of one level whose entries are read (one row of *entries* each).

        Leaves are decoded in bulk; tables, findings and bad leaves one by one.
        The tables below a level-2 table are collected and walked as one batch.
        """
        leaves, leaf_job, specials = _decode(self, jobs, level, entries, slots)
        bounds = np.searchsorted(leaf_job, np.arange(len(jobs) + 1)).tolist()
        shift = level_shift(level)
        whole = len(self.chunks)               # a batch's leaves go in as one chunk
        if len(jobs) > 1 and len(leaves):
            self.add_leaves(leaves)
        for t, job in enumerate(jobs):
            c0, f0 = len(self.chunks), len(self.findings)
            if len(jobs) == 1 and len(leaves):
                self.add_leaves(leaves)
            batch = _Batch() if level == 2 else None
            try:
                for index, entry, d in specials.get(t, ()):
                    gpa = job.base + (index << shift)
                    if d is None:
                        self.absent(entry, job.pa, level, gpa, index)
                    elif d.kind == TABLE:
                        self.table(entry & self.codec.frame_mask, gpa, level, job.pa, index,
                                   entry, job.inherited & d.perm, job.path, batch)
                    else:
                        self.bad(d, entry, gpa, level, job.pa, index)
            finally:   # a budget stop still walks what was collected before it
                if batch is not None and batch.jobs:
                    self.walk_batch(batch)
            if job.key is None:
                continue
            if len(jobs) == 1:
                self.done[job.key] = _Span(c0, len(self.chunks), f0, len(self.findings),
                                           job.base)
            else:                              # level 1: rows of the batch chunk
                self.done[job.key] = _Span(whole, whole + 1, f0, len(self.findings),
                                           job.base, bounds[t], bounds[t + 1])

    def walk_batch(self, batch: _Batch) -> None:
        """The level-1 tables below one level-2 table, decoded together; then repeats."""
        jobs, batch.jobs = batch.jobs, []
        self.walk_tables(jobs, 1, np.stack([self.pages[j.pa] for j in jobs]))
        for key, gpa in batch.repeats:
            self.repeat(self.done[key], gpa)

    def bad(self, d: Decoded, entry: int, gpa: int, level: int, table: int,
            index: int) -> None:
        """A present entry that is a finding: its codec's kind, or a leaf's bad frame."""
        page, slot = _where(table, index)
        if d.kind != LEAF:
            self.finding(d.kind, gpa, level, page, slot, entry, d.detail)
            return
        size = 1 << level_shift(level)
        hpa = entry & self.codec.frame_mask
        if hpa & (size - 1) & ~self.codec.large_low_ok:
            self.finding("reserved_bits", gpa, level, page, slot, entry,
                         "output address not aligned to the leaf size")
        else:
            self.finding("frame_beyond_memory", gpa, level, page, slot, entry,
                         f"leaf frame {hpa:#x}")

    def absent(self, entry: int, table: int, level: int, gpa: int, index: int) -> None:
        """A non-present entry with alarm bits: report what the codec says."""
        d = self.codec.decode_absent(entry, level)
        if d.kind not in (SKIP, LEAF, TABLE):
            self.finding(d.kind, gpa, level, *_where(table, index), entry, d.detail)

    def table(self, child: int, gpa: int, level: int, table: int, index: int, entry: int,
              inherited: int, path: frozenset[int], batch: _Batch | None = None) -> None:
        """Follow a table entry unless it loops, points beyond memory or was walked.

        With *batch* (a level-1 child) the table is collected for :meth:`walk_batch`.
        """
        page, slot = _where(table, index)
        if child in path:
            self.finding("loop", gpa, level, page, slot, entry,
                         f"table {child:#x} is already on the path from the root")
            return
        if self.beyond(child, PAGE_SIZE):
            self.finding("frame_beyond_memory", gpa, level, page, slot, entry,
                         f"table frame {child:#x}")
            return
        key = (child, level - 1, inherited)
        if (child, level - 1) in self.seen and not self.codec.shares_tables:
            self.finding("shared_table", gpa, level, page, slot, entry,
                         f"table {child:#x} is also reached from another entry")
        if key in self.done:
            self.repeat(self.done[key], gpa)
            return
        if batch is not None and key in batch.keys:
            batch.repeats.append((key, gpa))
            return
        self.seen.add((child, level - 1))
        entries = self.read_table(child, gpa, level - 1)
        job = _Job(child, gpa, inherited, path | {child}, key)
        if batch is not None:
            batch.jobs.append(job)
            batch.keys.add(key)
        else:
            self.walk_tables([job], level - 1, entries[None, :])

    def repeat(self, span: _Span, base: int) -> None:
        """The leaves and findings of an earlier walk of a table, moved to *base*."""
        delta = base - span.base
        shift = np.uint64(delta % 2**64)      # modular: a move down wraps back exactly
        parts = (self.chunks[span.c0:span.c1] if span.lo < 0 else
                 [self.chunks[span.c0].rows(span.lo, span.hi)] if span.hi > span.lo else [])
        for part in parts:
            if len(part):
                self.add_leaves(replace(part, gpa=part.gpa + shift))
        for f in self.findings[span.f0:span.f1]:
            if len(self.findings) >= self.limits.max_findings:
                self.stop(f.gpa + delta, f.level, f.table,
                          f"more than {self.limits.max_findings} findings")
            self.findings.append(replace(f, gpa=f.gpa + delta))


class _Job(NamedTuple):
    """One table to walk: where, at which input address, under which permissions."""

    pa: int
    base: int
    inherited: int
    path: frozenset[int]
    key: tuple[int, int, int] | None       # (pa, level, inherited) for repeats; None: root


@dataclass
class _Batch:
    """Level-1 tables collected below one level-2 table."""

    jobs: list[_Job] = field(default_factory=list)
    keys: set[tuple[int, int, int]] = field(default_factory=set)
    repeats: list[tuple[tuple[int, int, int], int]] = field(default_factory=list)


Special = tuple[int, int, "Decoded | None"]     # (index, entry, decoding; None = absent)


def _decode(w: _Walker, jobs: list[_Job], level: int, entries: U64,
            slots: Collection[int] | None) -> tuple[Leaves, np.ndarray, dict[int, list[Special]]]:
    """Bulk decode of the tables *jobs* (rows of *entries*): the good leaves, the job of
    each leaf, and per job the entries that need a closer look, in index order."""
    codec = w.codec
    k, n = entries.shape
    flat = entries.reshape(-1)
    present = (flat & np.uint64(codec.present_mask)) != 0
    absent_rows = (np.flatnonzero(~present & ((flat & np.uint64(codec.alarm_mask)) != 0))
                   if codec.alarm_mask else np.zeros(0, np.intp))
    if slots is not None:
        present &= np.isin(np.arange(flat.size) % n, np.fromiter(slots, np.int64))
    rows = np.flatnonzero(present)
    pe = flat[rows]
    attr = pe & w.not_frame
    if attr.size and bool((attr == attr[0]).all()):
        uniq: list[int] = [int(attr[0])]
        inv = np.zeros(attr.size, np.intp)
    else:
        u, inv = np.unique(attr, return_inverse=True)
        uniq = u.tolist()
    decs = [w.decode(a, level) for a in uniq]
    cls = np.array([_LEAF if d.kind == LEAF else _SKIP if d.kind == SKIP else _OTHER
                    for d in decs], np.uint8)[inv]
    size = 1 << level_shift(level)
    hpa = pe & np.uint64(codec.frame_mask)
    aligned = hpa & np.uint64(~(size - 1) & (2**64 - 1))
    bad = (hpa & np.uint64((size - 1) & ~codec.large_low_ok)) != 0
    if w.limits.mem_size is not None:
        bad |= aligned > np.uint64(max(w.limits.mem_size - size, -1) % 2**64) \
            if w.limits.mem_size >= size else np.ones(aligned.size, bool)
    leaf = cls == _LEAF
    good = np.flatnonzero(leaf & ~bad)
    if k == 1:
        job_of, index = np.zeros(rows.size, np.intp), rows
    elif n == ENTRIES:
        job_of, index = rows >> 9, rows & (ENTRIES - 1)
    else:
        job_of, index = np.divmod(rows, n)
    specials: dict[int, list[Special]] = {}
    odd = np.flatnonzero((cls == _OTHER) | (leaf & bad))
    for j, i, e, v in zip(job_of[odd].tolist(), index[odd].tolist(), pe[odd].tolist(),
                          inv[odd].tolist(), strict=True):
        specials.setdefault(j, []).append((i, e, decs[v]))
    if absent_rows.size:
        for r in absent_rows.tolist():
            specials.setdefault(r // n, []).append((r % n, int(flat[r]), None))
        for lst in specials.values():
            lst.sort(key=lambda s: s[0])
    return _leaf_rows(codec, jobs, level, decs, good, job_of, index, pe, aligned, inv), \
        job_of[good], specials


def _leaf_rows(codec: EntryCodec, jobs: list[_Job], level: int, decs: list[Decoded],
               good: np.ndarray, job_of: np.ndarray, index: np.ndarray, pe: U64, aligned: U64,
               inv: np.ndarray) -> Leaves:
    """The good leaves (rows *good* of the present entries) as columns."""
    m = good.size
    inh = sorted({j.inherited for j in jobs})
    ftab = np.array([[_leaf_flags(d, i) for d in decs] for i in inh], np.uint8)
    memtypes = np.array([-1 if d.memtype is None else d.memtype for d in decs], np.int16)
    if len(decs) == 1 and len(inh) == 1:       # one kind of leaf: constant columns
        flags, memtype = np.full(m, ftab[0, 0], np.uint8), np.full(m, memtypes[0], np.int16)
    else:
        gv = inv[good]
        icode = np.array([inh.index(j.inherited) for j in jobs], np.intp)
        flags, memtype = ftab[icode[job_of[good]], gv], memtypes[gv]
    if level > 1 and type(codec).leaf_memtype is not EntryCodec.leaf_memtype and m:
        memtype = _large_memtypes(codec, level, pe[good], memtype)
    gi = index[good].astype(np.uint64)
    if len(jobs) == 1:
        base, pa = np.uint64(jobs[0].base), np.uint64(jobs[0].pa)
    else:
        gj = job_of[good]
        base = np.array([j.base for j in jobs], np.uint64)[gj]
        pa = np.array([j.pa for j in jobs], np.uint64)[gj]
    where = pa + (gi << np.uint64(3))             # entry address (concatenated roots too)
    return Leaves(
        gpa=base + (gi << np.uint64(level_shift(level))), hpa=aligned[good],
        size=np.full(m, 1 << level_shift(level), np.uint64), raw=pe[good],
        table=where & np.uint64(~(PAGE_SIZE - 1) & (2**64 - 1)),
        index=((where >> np.uint64(3)) & np.uint64(ENTRIES - 1)).astype(np.uint16),
        level=np.full(m, level, np.uint8), flags=flags, memtype=memtype)


def _large_memtypes(codec: EntryCodec, level: int, raw: U64,
                    memtype: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """Large leaves' memory types with the bits the codec keeps in the low frame field
    (x86 PAT, bit 12); large leaves are few, so one call each is cheap."""
    out = [codec.leaf_memtype(e, level, None if t < 0 else t)
           for e, t in zip(raw.tolist(), memtype.tolist(), strict=True)]
    return np.array([-1 if t is None else t for t in out], np.int16)


def _leaf_flags(d: Decoded, inherited: int) -> int:
    """The Leaves flags byte of a leaf decoding under the permissions from above."""
    if d.kind != LEAF:
        return 0
    p = d.perm & inherited
    return pack_flags(bool(p & PERM_R), bool(p & PERM_W), bool(p & PERM_X), d.accessed, d.dirty)


def _u64(data: bytes) -> U64:
    """A page's little-endian entries (no copy on a little-endian host)."""
    arr = np.frombuffer(data, dtype="<u8")
    return arr if arr.dtype == np.uint64 else arr.astype(np.uint64)


def _read_root(w: _Walker, root: int, shape: RadixShape) -> U64:
    """All root entries, from one or several concatenated pages."""
    pages = max(1, -(-shape.root_entries // ENTRIES))
    parts = [w.read_table(root + i * PAGE_SIZE, 0, shape.levels) for i in range(pages)]
    return np.concatenate(parts)[:shape.root_entries] if pages > 1 else parts[0]


def walk_radix(mem: PhysMem, root: int, codec: EntryCodec, shape: RadixShape,
               limits: WalkLimits | None = None) -> WalkResult:
    """Walk the tree at physical *root*; leaves come out in ascending input order."""
    w = _Walker(mem, codec, limits or WalkLimits())
    pages = max(1, -(-shape.root_entries // ENTRIES))
    path = frozenset(root + i * PAGE_SIZE for i in range(pages))
    try:
        if w.beyond(root, pages * PAGE_SIZE):
            w.finding("frame_beyond_memory", 0, shape.levels, root, 0, root, "root table")
        else:
            entries = _read_root(w, root, shape)
            w.walk_tables([_Job(root, 0, PERM_RWX, path, None)], shape.levels,
                          entries[None, :], shape.top_slots)
    except _BudgetExceeded:
        pass
    return WalkResult(None, _in_walk_order(w.findings), w.tables_read,
                      leaves=Leaves.concat(w.chunks).ascending())


def _in_walk_order(findings: list[StructuralFinding]) -> list[StructuralFinding]:
    """Findings in depth-first order: by input address, the upper level first; the
    budget finding (which ends the walk) last."""
    return sorted(findings, key=lambda f: (f.kind == "read_budget", f.gpa, -f.level))
