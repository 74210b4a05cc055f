"""DragonFly BSD VPTE page tables: the vkernel's software second level.

A ``MAP_VPAGETABLE`` map entry of a vkernel process is translated by the
*host* kernel through page tables that the vkernel keeps inside the entry's
backing object, its memory image (``MemImageFd``).  Two things differ from
hardware formats:

* the walk starts from the map entry's *master page-directory entry*
  (``entry->aux.master_pde``, set by ``mcontrol(MADV_SETMAP)``), not from a
  table address;
* every frame is a byte offset into the memory image, so the
  :class:`~harness.mem.PhysMem` given to :func:`walk` reads the *image*, and
  ``Mapping.hpa`` is an image offset.

This module mirrors ``vm_fault_vpagetable()`` (``sys/vm/vm_fault.c``)::

    vshift = VPTE_FRAME_END - PAGE_SHIFT = 36;  vpte = master_pde
    loop: fail unless VPTE_V; a write needs VPTE_RW; an exec fails on VPTE_NX
          stop if VPTE_PS or vshift == 0
          page = image page (vpte & VPTE_FRAME) >> PAGE_SHIFT;  vshift -= 9
          vpte = page[(pindex >> vshift) & VPTE_PAGE_MASK]
    pindex = ((vpte & VPTE_FRAME) >> PAGE_SHIFT) + (pindex & ((1 << vshift) - 1))

Example (x86-like layout): the master PDE ``0x83`` (VPTE_PS | VPTE_RW |
VPTE_V, frame 0) maps the whole region linearly onto the image; the master
PDE ``0x1003`` points at a top-level table at image offset 0x1000, whose
entries cover 512 GiB each, down to 4 KiB entries after four tables.
A leaf found with vshift ``s`` is ``Mapping.level`` ``s // 9 + 1`` and spans
``4096 << s`` bytes (level 5 = a VPTE_PS master entry).

Bit layouts [V: DragonFly ``sys/sys/vkernel.h``]: the current x86-like one
and the older one with separate R/W/X bits; ``VPTEParams.layout`` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field, replace
from itertools import compress
from typing import Any

from harness.errors import MemoryReadError, ScenarioError
from harness.formats.base import Format, Mapping, StructuralFinding, WalkLimits, WalkResult
from harness.mem import PAGE_SIZE, PhysMem, read_u64, read_u64s
from harness.registry import Registry

__all__ = ["VPTE_FRAME", "VPTE_FRAME_END", "VPTE_PAGE_BITS", "VPTE_PAGE_ENTRIES",
           "VPTE_PAGE_MASK", "MASTER_VSHIFT", "VPTELayout", "LAYOUTS", "VPTEParams",
           "VPTEPerms", "ObjectImage", "layout_of", "walk", "translate", "VPTE"]

PAGE_SHIFT = 12
VPTE_FRAME_END = 48                      # bits of address a VPTE walk translates
VPTE_PAGE_BITS = 9                       # index bits per table page
VPTE_PAGE_ENTRIES = 1 << VPTE_PAGE_BITS  # 512 vpte_t per table page
VPTE_PAGE_MASK = VPTE_PAGE_ENTRIES - 1
VPTE_FRAME = 0x000FFFFFFFFFF000          # image byte offset of the next table or the page
MASTER_VSHIFT = VPTE_FRAME_END - PAGE_SHIFT  # 36: vshift of the master PDE


@dataclass(frozen=True)
class VPTELayout:
    """Bit assignments of one generation of ``sys/sys/vkernel.h``; 0 = the bit does not exist."""

    name: str
    v: int          # VPTE_V: valid
    ps: int         # VPTE_PS: the walk stops here (large page; linear map in the master PDE)
    rw: int         # VPTE_RW (x86 layout) or VPTE_W (old): writes allowed
    r: int          # VPTE_R (old layout): reads allowed; 0 = every valid entry is readable
    x: int          # VPTE_X (old layout): execution allowed; 0 = executable unless NX
    nx: int         # VPTE_NX (x86 layout) [M: bit 63]: execution forbidden
    a: int          # VPTE_A: accessed, written back by the host fault path
    m: int          # VPTE_M: modified; the host maps a page writable only once it is set
    u: int          # VPTE_U: user (set for guest user vmspaces; the host does not test it)
    g: int          # VPTE_G: global
    wired: int      # VPTE_WIRED: software bit of the vkernel pmap
    managed: int    # VPTE_MANAGED: software bit of the vkernel pmap


LAYOUTS: Registry[VPTELayout] = Registry("VPTE layout")
LAYOUTS.add("x86", VPTELayout(  # current, x86-like (commit 5d2f5a36)
    name="x86", v=0x1, rw=0x2, u=0x4, a=0x20, m=0x40, ps=0x80, g=0x100, wired=0x200,
    managed=0x400, r=0, x=0, nx=1 << 63))
LAYOUTS.add("old", VPTELayout(  # before the x86-like renumbering (commit 102ec862)
    name="old", v=0x1, ps=0x2, r=0x4, rw=0x8, x=0x10, a=0x20, m=0x40, u=0x80,
    managed=0x100, g=0x200, wired=0x400, nx=0))


@dataclass(frozen=True)
class VPTEParams:
    """Parameters of a VPTE walk over one VPAGETABLE map entry."""

    layout: str = "x86"          # key of LAYOUTS: "x86" (current) or "old"
    nx_bit: int | None = 63      # VPTE_NX bit of the x86 layout [M]; None = no NX bit
    base: int = 0                # VA of the map entry's start; added to every Mapping.gpa
    size: int = 1 << VPTE_FRAME_END   # length of the map entry; the walk covers [0, size)
    limits: WalkLimits = field(default_factory=WalkLimits)  # mem_size = image size


@dataclass(frozen=True)
class VPTEPerms:
    """What a VPTE path grants, and its final entry.

    ``r``/``w``/``x`` hold for every entry of the path (as the fault path
    tests every entry); ``m`` and ``a`` are the final entry's VPTE_M / VPTE_A.
    """

    r: bool
    w: bool
    x: bool
    m: bool = False
    a: bool = False
    vpte: int = 0     # the final entry
    level: int = 1    # its level: vshift // 9 + 1

    def narrow(self, vpte: int, bits: VPTELayout) -> VPTEPerms:
        """The grant after also passing through *vpte* (final-entry fields reset)."""
        return VPTEPerms(r=self.r and _readable(vpte, bits), w=self.w and bool(vpte & bits.rw),
                         x=self.x and _executable(vpte, bits))


_ALL = VPTEPerms(r=True, w=True, x=True)


def _readable(vpte: int, bits: VPTELayout) -> bool:
    return bool(vpte & bits.v) and (bits.r == 0 or bool(vpte & bits.r))


def _executable(vpte: int, bits: VPTELayout) -> bool:
    if bits.x:
        return bool(vpte & bits.x)
    return not (bits.nx and vpte & bits.nx)


def layout_of(params: VPTEParams) -> VPTELayout:
    """The bit layout *params* selects, with its VPTE_NX bit.

    >>> hex(layout_of(VPTEParams(nx_bit=62)).nx)
    '0x4000000000000000'
    """
    bits = LAYOUTS[params.layout]
    if params.nx_bit is not None and not VPTE_FRAME_END + 4 <= params.nx_bit <= 63:
        raise ScenarioError(f"VPTE_NX bit {params.nx_bit} is not one of bits 52..63",
                            field="nx_bit")
    if bits.nx:
        bits = replace(bits, nx=0 if params.nx_bit is None else 1 << params.nx_bit)
    return bits


def _level(vshift: int) -> int:
    return vshift // VPTE_PAGE_BITS + 1


def _room(frame: int, span: int, limits: WalkLimits) -> int:
    """Bytes of [frame, frame + span) inside the image, whole pages only."""
    if limits.mem_size is None:
        return span
    return max(0, min(span, (limits.mem_size - frame) & ~(PAGE_SIZE - 1)))


@dataclass
class _Walker:
    """State of one walk: the image, the layout, the result so far."""

    mem: PhysMem
    bits: VPTELayout
    params: VPTEParams
    out: WalkResult = field(default_factory=WalkResult)
    stopped: bool = False
    seen: set[tuple[int, int]] = field(default_factory=set)   # (table, vshift) walked
    narrowed: dict[tuple[VPTEPerms, int], VPTEPerms] = field(default_factory=dict)
    perm_bits: int = 0          # the entry bits VPTEPerms.narrow reads

    def __post_init__(self) -> None:
        b = self.bits
        self.perm_bits = b.v | b.rw | b.r | b.x | b.nx

    def visit(self, vpte: int, vshift: int, va: int, grant: VPTEPerms,
              path: tuple[int, ...], where: tuple[int, int]) -> None:
        """One entry covering region offset *va*; *where* = (table, index) holding it."""
        if self.stopped or not vpte & self.bits.v:
            return
        key = (grant, vpte & self.perm_bits)
        narrowed = self.narrowed.get(key)
        if narrowed is None:
            narrowed = self.narrowed[key] = grant.narrow(vpte, self.bits)
        grant = narrowed
        if vpte & self.bits.ps or vshift == 0:
            self.leaf(vpte, vshift, va, grant, where)
        else:
            self.descend(vpte, vshift, va, grant, path, where)

    def leaf(self, vpte: int, vshift: int, va: int, grant: VPTEPerms,
             where: tuple[int, int]) -> None:
        """Emit the mapping of a leaf, clipped to the region and the image."""
        span = min(PAGE_SIZE << vshift, self.params.size - va)
        frame = vpte & VPTE_FRAME
        inside = _room(frame, span, self.params.limits)
        if inside < span:
            self.refuse("frame_beyond_memory", vpte, vshift, va + inside, where,
                        f"image offset {frame + inside:#x} beyond the image")
        if inside and len(self.out.mappings) >= self.params.limits.max_leaves:
            self.refuse("read_budget", vpte, vshift, va, where,
                        f"more than {self.params.limits.max_leaves} leaves; walk stopped")
            self.stopped = True
        elif inside:   # tuple.__new__: all 13 fields, without NamedTuple's slow keywords
            self.out.mappings.append(tuple.__new__(Mapping, (
                self.params.base + va, frame, inside, grant.r, grant.w, grant.x,
                _level(vshift), vpte, None, bool(vpte & self.bits.a),
                bool(vpte & self.bits.m), where[0], where[1])))

    def descend(self, vpte: int, vshift: int, va: int, grant: VPTEPerms,
                path: tuple[int, ...], where: tuple[int, int]) -> None:
        """Read the table *vpte* points at and visit its entries in order."""
        table = vpte & VPTE_FRAME
        entries = self.read_table(vpte, vshift, va, path, where)
        child = vshift - VPTE_PAGE_BITS
        valid = self.bits.v
        # compress(): invalid entries (most of a sparse table) cost no Python call
        for i, raw in compress(enumerate(entries), [e & valid for e in entries]):
            cva = va + (i << (child + PAGE_SHIFT))
            if cva >= self.params.size or self.stopped:
                break
            self.visit(raw, child, cva, grant, path + (table,), (table, i))

    def read_table(self, vpte: int, vshift: int, va: int, path: tuple[int, ...],
                   where: tuple[int, int]) -> tuple[int, ...]:
        """The 512 entries of the table *vpte* points at, or () after a finding."""
        table = vpte & VPTE_FRAME
        if _room(table, PAGE_SIZE, self.params.limits) < PAGE_SIZE:
            self.refuse("frame_beyond_memory", vpte, vshift, va, where,
                        f"table at image offset {table:#x} beyond the image")
            return ()
        if table in path:
            self.refuse("loop", vpte, vshift, va, where,
                        f"table {table:#x} is its own ancestor")
            return ()
        if (table, vshift) in self.seen:
            self.refuse("shared_table", vpte, vshift, va, where,
                        f"table {table:#x} is also reached from another entry; "
                        "walked once")
            return ()
        if self.out.tables_read >= self.params.limits.max_tables:
            self.refuse("read_budget", vpte, vshift, va, where,
                        f"more than {self.params.limits.max_tables} tables")
            self.stopped = True
            return ()
        self.out.tables_read += 1
        self.seen.add((table, vshift))
        return read_u64s(self.mem, table, VPTE_PAGE_ENTRIES)

    def refuse(self, kind: str, vpte: int, vshift: int, va: int,
               where: tuple[int, int], detail: str) -> None:
        """Record a structural finding for the entry *vpte* (within the findings budget)."""
        if self.stopped:
            return
        if len(self.out.findings) >= self.params.limits.max_findings:
            kind, detail = "read_budget", (f"more than {self.params.limits.max_findings} "
                                           "findings; walk stopped")
            self.stopped = True
        self.out.findings.append(StructuralFinding(
            kind=kind, gpa=self.params.base + va, level=_level(vshift), table=where[0],
            index=where[1], raw=vpte, detail=detail))


def walk(mem: PhysMem, master_pde: int, params: VPTEParams | None = None) -> WalkResult:
    """Every mapping of a VPAGETABLE region, from its master PDE, over the image *mem*.

    Mappings come in ascending VA order; ``gpa`` is ``params.base`` plus the
    offset in the region, ``hpa`` the image offset.  The master entry has no
    table: its findings and mappings carry table 0, index 0.  Tables beyond
    ``params.limits.mem_size`` (the image size), tables that are their own
    ancestors, and walks past ``max_tables`` table reads become findings; a
    failed image read raises :class:`~harness.errors.MemoryReadError`.

    >>> from harness.mem import DictMem
    >>> walk(DictMem(size=1 << 20), 0x83, VPTEParams(size=1 << 16)).mappings[0].size
    65536
    """
    params = params or VPTEParams()
    walker = _Walker(mem, layout_of(params), params)
    walker.visit(master_pde, MASTER_VSHIFT, 0, _ALL, (), (0, 0))
    return walker.out


def _next_vpte(mem: PhysMem, vpte: int, vshift: int, pindex: int,
               limits: WalkLimits) -> int | None:
    """The entry for *pindex* in the table *vpte* points at (vshift already lowered)."""
    table = vpte & VPTE_FRAME
    if _room(table, PAGE_SIZE, limits) < PAGE_SIZE:
        return None  # vm_fault_object() fails beyond the object
    return read_u64(mem, table + 8 * ((pindex >> vshift) & VPTE_PAGE_MASK))


def translate(mem: PhysMem, master_pde: int, va: int,
              params: VPTEParams | None = None) -> tuple[int, VPTEPerms] | None:
    """The image byte offset of *va* and the path's grant, or None if no valid path.

    *va* is in the same space as ``Mapping.gpa`` (``params.base`` included).
    Mirrors ``vm_fault_vpagetable()`` step by step, without its write-back
    of VPTE_A / VPTE_M.

    >>> from harness.mem import DictMem
    >>> off, perms = translate(DictMem(size=1 << 20), 0x83, 0x5123, VPTEParams(size=1 << 16))
    >>> hex(off), perms.w, perms.m
    ('0x5123', True, False)
    """
    params = params or VPTEParams()
    bits, rel = layout_of(params), va - params.base
    if not 0 <= rel < params.size:
        return None
    pindex, vshift, vpte, grant = rel >> PAGE_SHIFT, MASTER_VSHIFT, master_pde, _ALL
    while True:
        if not vpte & bits.v:
            return None
        grant = grant.narrow(vpte, bits)
        if vpte & bits.ps or vshift == 0:
            break
        vshift -= VPTE_PAGE_BITS
        nxt = _next_vpte(mem, vpte, vshift, pindex, params.limits)
        if nxt is None:
            return None
        vpte = nxt
    page = ((vpte & VPTE_FRAME) >> PAGE_SHIFT) + (pindex & ((1 << vshift) - 1))
    if _room(page << PAGE_SHIFT, PAGE_SIZE, params.limits) < PAGE_SIZE:
        return None
    return (page << PAGE_SHIFT | rel & (PAGE_SIZE - 1),
            VPTEPerms(r=grant.r, w=grant.w, x=grant.x, m=bool(vpte & bits.m),
                      a=bool(vpte & bits.a), vpte=vpte, level=_level(vshift)))


class ObjectImage:
    """The memory image as its object's resident pages: image offset -> L1 physical page.

    Serves as the image reader of :func:`walk` / :func:`translate` (a
    :class:`~harness.mem.PhysMem` over image offsets) and as the model's
    :class:`~harness.models.base.Backing`.  *pages* maps each resident
    object page's image offset to the L1 physical page holding it (the
    ``vm_object``'s page list); reading a page not in it raises.

    >>> from harness.mem import DictMem
    >>> phys = DictMem(size=1 << 20); phys.write_u64(0x9008, 0x1003)
    >>> img = ObjectImage(phys, {0x1000: 0x9000}, size=0x4000)
    >>> hex(read_u64(img, 0x1008)), hex(img.resolve(None, 0x1234))
    ('0x1003', '0x9000')
    """

    def __init__(self, phys: PhysMem, pages: AbcMapping[int, int], size: int) -> None:
        self.phys = phys
        self.pages = dict(pages)
        self.size = size

    def read(self, addr: int, size: int) -> bytes:
        """*size* bytes at image offset *addr*; raises on a page that is not resident."""
        if addr < 0 or size < 0 or addr + size > self.size:
            raise MemoryReadError(addr, size, f"beyond the image size {self.size:#x}")
        out = bytearray()
        while len(out) < size:
            pos = addr + len(out)
            page, off = pos & ~(PAGE_SIZE - 1), pos & (PAGE_SIZE - 1)
            if page not in self.pages:
                raise MemoryReadError(pos, size - len(out), "image page not resident")
            n = min(size - len(out), PAGE_SIZE - off)
            out += self.phys.read(self.pages[page] + off, n)
        return bytes(out)

    def resolve(self, rng: Any, offset: int) -> int | None:
        """The L1 physical page holding image offset *offset* (Backing protocol)."""
        return self.pages.get(offset & ~(PAGE_SIZE - 1))


VPTE = Format(
    name="vpte",
    description="DragonFly vkernel VPTE tables (memory-image offsets, master PDE root)",
    walk=walk, params=VPTEParams)
