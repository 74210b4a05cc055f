"""An independent CTF writer, for testing :mod:`harness.ctf` (as encoders.py is for tables).

Written from the format description (OpenBSD ``sys/sys/ctf.h`` v1.5 and the
ctfconv behaviour noted in the project's research notes), not from the
reader: it imports nothing from ``harness``.  It lays out C structs with
natural alignment (``CtfWriter.layout``) so fixtures get realistic offsets,
and writes either flavour:

* ``openbsd``: type 1 is INTEGER ``void`` (size 0), base type sizes in bits,
  base types named after the DWARF encoding, incomplete structs as an empty
  STRUCT, the body zlib-compressed (``CTF_F_COMPRESS``);
* ``freebsd``: sizes in bytes, FORWARD for incomplete structs, optionally a
  child container (parname set, own ids from 0x8001);
* ``version=3`` (FreeBSD 14 and later, FreeBSD ``sys/sys/ctf.h``): 32-bit names,
  info (kind << 26 | root << 25 | vlen), sizes, type ids, member offsets and
  array fields; child ids from 0x80000001.

>>> w = CtfWriter(); u32 = w.int_("unsigned", 4)
>>> s = w.struct("struct pt", [("x", u32), ("y", u32)])
>>> w.layout_of(s)["y"]
4
>>> w.blob()[:2]
b'\\xf1\\xcf'
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

__all__ = ["CtfWriter", "K_INTEGER", "K_POINTER", "K_ARRAY", "K_STRUCT", "K_UNION", "K_ENUM",
           "K_FORWARD", "K_TYPEDEF", "K_CONST", "K_VOLATILE"]

# CTF_K_* from ctf.h
K_INTEGER, K_FLOAT, K_POINTER, K_ARRAY, K_FUNCTION, K_STRUCT, K_UNION = 1, 2, 3, 4, 5, 6, 7
K_ENUM, K_FORWARD, K_TYPEDEF, K_VOLATILE, K_CONST, K_RESTRICT = 8, 9, 10, 11, 12, 13
INT_SIGNED, INT_CHAR, INT_BOOL = 1, 2, 4
MAX_SIZE = {2: 0xFFFE, 3: 0xFFFFFFFE}            # larger sizes take the long form
LSTRUCT_THRESH = {2: 8192, 3: 1 << 29}
CHILD_FIRST = {2: 0x8001, 3: 0x8000_0001}


@dataclass
class _T:
    """One type to write: kind, name, byte size, alignment, and kind data."""

    kind: int
    name: str
    size: int = 0
    align: int = 1
    ref: int = 0
    signed: bool = False
    nelems: int = 0
    members: list[tuple[str, int, int]] = field(default_factory=list)   # name, type, bits
    enums: list[tuple[str, int]] = field(default_factory=list)


class CtfWriter:
    """Builds a CTF container; ids are positions, 1-based (0x8001-based for a child)."""

    def __init__(self, flavour: str = "openbsd", parent_name: str = "",
                 parent: CtfWriter | None = None, version: int = 2) -> None:
        assert flavour in ("openbsd", "freebsd") and version in (2, 3)
        self.flavour = flavour
        self.version = version
        self.parent_name = parent_name
        self.parent = parent
        self.first = CHILD_FIRST[version] if parent_name else 1
        self.types: list[_T] = []
        self.offsets: dict[int, dict[str, int]] = {}
        if flavour == "openbsd" and not parent_name:
            self._add(_T(K_INTEGER, "void", 0, 1))      # ctfconv's fake void, type 1

    def _add(self, t: _T) -> int:
        self.types.append(t)
        return self.first + len(self.types) - 1

    def _get(self, tid: int) -> _T:
        if self.parent is not None and tid < CHILD_FIRST[self.version] - 1:
            return self.parent._get(tid)
        return self.types[tid - self.first]

    # -- types ------------------------------------------------------------------

    def int_(self, name: str, nbytes: int, signed: bool = False) -> int:
        """An INTEGER of *nbytes* bytes."""
        return self._add(_T(K_INTEGER, name, nbytes, nbytes, signed=signed))

    def ptr(self, ref: int) -> int:
        return self._add(_T(K_POINTER, "", 8, 8, ref=ref))

    def typedef(self, name: str, ref: int) -> int:
        r = self._get(ref)
        return self._add(_T(K_TYPEDEF, name, r.size, r.align, ref=ref))

    def qual(self, kind: int, ref: int) -> int:
        r = self._get(ref)
        return self._add(_T(kind, "", r.size, r.align, ref=ref))

    def array(self, elem: int, nelems: int) -> int:
        e = self._get(elem)
        return self._add(_T(K_ARRAY, "", e.size * nelems, e.align, ref=elem, nelems=nelems))

    def enum(self, name: str, values: list[tuple[str, int]]) -> int:
        return self._add(_T(K_ENUM, name.removeprefix("enum "), 4, 4, enums=values))

    def forward(self, spec: str) -> int:
        """An incomplete ``struct NAME``: OpenBSD writes an empty STRUCT, FreeBSD a FORWARD."""
        name = spec.split(" ", 1)[1]
        kind = K_STRUCT if self.flavour == "openbsd" else K_FORWARD
        return self._add(_T(kind, name, 0, 1))

    def declare(self, spec: str) -> int:
        """Reserve the id of ``struct NAME`` (for self-referencing pointers); define it later."""
        return self._add(_T(K_STRUCT, spec.split(" ", 1)[1], 0, 8))

    def struct(self, spec: str, members: list[tuple[str, int]], *, union: bool = False,
               size: int | None = None, at: dict[str, int] | None = None,
               define: int | None = None) -> int:
        """A struct (or union) laid out with natural alignment; *at* pins byte offsets.

        *spec* is ``"struct NAME"`` or ``""`` for an anonymous one; *define* fills
        an id reserved by :meth:`declare`.
        """
        name = spec.split(" ", 1)[1] if spec else ""
        offs, end, align = self._lay(members, union, at or {})
        total = size if size is not None else -(-end // align) * align
        t = _T(K_UNION if union else K_STRUCT, name, total, align,
               members=[(n, tid, 8 * offs[i]) for i, (n, tid) in enumerate(members)])
        if define is not None:
            self.types[define - self.first] = t
            tid = define
        else:
            tid = self._add(t)
        self.offsets[tid] = {n: offs[i] for i, (n, _tid) in enumerate(members) if n}
        return tid

    def _lay(self, members: list[tuple[str, int]], union: bool,
             at: dict[str, int]) -> tuple[list[int], int, int]:
        """Byte offsets of *members*, the end, and the struct's alignment."""
        offs, pos, align, end = [], 0, 1, 0
        for n, tid in members:
            m = self._get(tid)
            align = max(align, m.align)
            off = 0 if union else at.get(n, -(-pos // m.align) * m.align)
            offs.append(off)
            pos = off + m.size
            end = max(end, pos)
        return offs, end, align

    def layout_of(self, tid: int) -> dict[str, int]:
        """name -> byte offset of the struct *tid*'s named members (the oracle)."""
        return self.offsets[tid]

    def size_of(self, tid: int) -> int:
        return self._get(tid).size

    # -- encoding ---------------------------------------------------------------

    def _strings(self) -> tuple[bytes, dict[str, int]]:
        table, index = bytearray(b"\0"), {"": 0}
        names = [self.parent_name] + [t.name for t in self.types]
        names += [m[0] for t in self.types for m in t.members]
        names += [e[0] for t in self.types for e in t.enums]
        for n in names:
            if n not in index:
                index[n] = len(table)
                table += n.encode() + b"\0"
        return bytes(table), index

    def _record(self, t: _T, s: dict[str, int]) -> bytes:
        vlen = len(t.members) or len(t.enums)
        v3 = self.version == 3
        info = (t.kind << 26) | (1 << 25) | vlen if v3 else (t.kind << 11) | (1 << 10) | vlen
        sized = t.kind in (K_INTEGER, K_FLOAT, K_STRUCT, K_UNION, K_ENUM)
        value = t.size if sized else t.ref
        if t.kind == K_INTEGER and self.flavour == "openbsd":
            value = 8 * t.size                         # ctfconv: base type size in bits
        if t.kind == K_ARRAY or t.kind == K_FORWARD:
            value = 0
        head, sent = ("<III", 0xFFFFFFFF) if v3 else ("<IHH", 0xFFFF)
        if value > MAX_SIZE[self.version]:
            out = struct.pack(head + "II", s[t.name], info, sent, value >> 32,
                              value & 0xFFFFFFFF)
        else:
            out = struct.pack(head, s[t.name], info, value)
        return out + self._data(t, s)

    def _data(self, t: _T, s: dict[str, int]) -> bytes:
        if t.kind == K_INTEGER:
            enc = (INT_SIGNED if t.signed else 0) | (INT_CHAR if t.name.endswith("char") else 0)
            return struct.pack("<I", enc << 24 | 8 * t.size)
        v3 = self.version == 3
        if t.kind == K_ARRAY:
            return struct.pack("<III" if v3 else "<HHI", t.ref, 0, t.nelems)
        if t.kind in (K_STRUCT, K_UNION):
            if t.size < LSTRUCT_THRESH[self.version]:
                return b"".join(struct.pack("<III" if v3 else "<IHH", s[n], tid, bits)
                                for n, tid, bits in t.members)
            if v3:
                return b"".join(struct.pack("<IIII", s[n], tid, bits >> 32, bits & 0xFFFFFFFF)
                                for n, tid, bits in t.members)
            return b"".join(struct.pack("<IHHII", s[n], tid, 0, bits >> 32, bits & 0xFFFFFFFF)
                            for n, tid, bits in t.members)
        if t.kind == K_ENUM:
            return b"".join(struct.pack("<Ii", s[n], v) for n, v in t.enums)
        return b""

    def blob(self, compress: bool = True) -> bytes:
        """The whole container: header, then labels/objects/functions (empty), types, strings."""
        strings, s = self._strings()
        types = b"".join(self._record(t, s) for t in self.types)
        body = types + strings
        typeoff, stroff = 0, len(types)
        parname = s[self.parent_name] if self.parent_name else 0
        hdr = struct.pack("<HBB8I", 0xCFF1, self.version, 1 if compress else 0, 0, parname, 0, 0, 0,
                          typeoff, stroff, len(strings))
        return hdr + (zlib.compress(body) if compress else body)
