"""A small reader of the kernel's BTF type information, with split module BTF.

The format is the kernel's ``Documentation/bpf/btf.rst``: a 24-byte header
(magic 0xEB9F, version, flags, hdr_len, type_off/len, str_off/len), a type
section of ``struct btf_type`` records (name_off, info, size_or_type) each
followed by kind-specific data, and a NUL-separated string section.

Modules carry *split* BTF on top of vmlinux's: their type ids continue after
the last vmlinux id and their string offsets after vmlinux's string section.
Every module is split against vmlinux alone, so each module is its own
"layer" whose ids resolve in (vmlinux + that module).

>>> btf = Btf.load(base_blob, [kvm_blob])            # doctest: +SKIP
>>> hex(btf.offsetof("struct vcpu_svm", "vmcb01.pa"))  # Debian 6.1  # doctest: +SKIP
'0x19a8'
"""

from __future__ import annotations

import difflib
import re
import struct
from dataclasses import dataclass, field

from harness.ktypes import TypeLookupError

__all__ = ["Btf", "BtfType", "BtfMember", "BtfError", "Kind", "BTF_MAGIC", "POINTER_SIZE"]

BTF_MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off/len str_off/len
TYPE = struct.Struct("<III")          # name_off info size_or_type
POINTER_SIZE = 8                      # x86-64 and arm64


class Kind:
    """BTF_KIND_* values (include/uapi/linux/btf.h)."""

    INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
    VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
    FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19


KIND_NAMES = {Kind.PTR: "<pointer>", Kind.ARRAY: "<array>", Kind.FUNC_PROTO: "<function type>",
              Kind.VOLATILE: "<volatile>", Kind.CONST: "<const>", Kind.RESTRICT: "<restrict>",
              Kind.TYPE_TAG: "<type tag>"}
# kinds that only qualify another type: skipped when resolving
MODIFIERS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
# bytes of kind-specific data after btf_type: (fixed, per vlen item)
EXTRA = {Kind.INT: (4, 0), Kind.ARRAY: (12, 0), Kind.STRUCT: (0, 12), Kind.UNION: (0, 12),
         Kind.ENUM: (0, 8), Kind.FUNC_PROTO: (0, 8), Kind.VAR: (4, 0), Kind.DATASEC: (0, 12),
         Kind.DECL_TAG: (4, 0), Kind.ENUM64: (0, 12)}
PREFIX = {"struct": (Kind.STRUCT,), "union": (Kind.UNION,), "enum": (Kind.ENUM, Kind.ENUM64)}
PATH_PART = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)((?:\[\d+\])*)$")


class BtfError(TypeLookupError):
    """A type or member the harness needs is not in the kernel's BTF."""


@dataclass(frozen=True)
class BtfMember:
    """A struct/union member: *bit_offset* from the start, *bitfield_size* 0 if none."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0


@dataclass(frozen=True)
class BtfType:
    """One type record.  *layer* says in which split (0 = vmlinux) its ids resolve.

    ``size`` is the byte size for INT/STRUCT/UNION/ENUM/FLOAT/DATASEC, ``ref`` the
    referenced type id for PTR/TYPEDEF/modifiers/FUNC/VAR, ``nelems`` for ARRAY.
    """

    id: int
    kind: int
    name: str
    layer: int
    size: int = 0
    ref: int = 0
    nelems: int = 0
    encoding: int = 0     # INT: BTF_INT_SIGNED 1, CHAR 2, BOOL 4; ENUM/ENUM64: 1 if signed
    members: tuple[BtfMember, ...] = field(default=(), repr=False)

    def describe(self) -> str:
        """``struct kvm``, ``union foo`` or the bare name, as C spells it."""
        for word, kinds in PREFIX.items():
            if self.kind in kinds:
                return f"{word} {self.name or '<anon>'}"
        return self.name or KIND_NAMES.get(self.kind, f"<kind {self.kind}>")


def _string(strings: bytes, off: int) -> str:
    """The NUL-terminated string at *off*."""
    end = strings.index(b"\0", off)
    return strings[off:end].decode("utf-8", "replace")


class _Layer:
    """The types and strings of one BTF blob (vmlinux or one module)."""

    def __init__(self, blob: bytes, index: int, base: _Layer | None) -> None:
        if len(blob) < HEADER.size:
            raise BtfError(f"BTF blob of {len(blob)} bytes is shorter than its header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            HEADER.unpack_from(blob)
        if magic != BTF_MAGIC or version != 1:
            raise BtfError(f"not BTF: magic {magic:#x} version {version}")
        self.index = index
        self.base = base
        self.strings = blob[hdr_len + str_off:hdr_len + str_off + str_len]
        self.first_id: int = 1 if base is None else base.first_id + len(base.types)
        self.str_base = 0 if base is None else len(base.strings)
        self.types: list[BtfType] = []
        self._parse(blob[hdr_len + type_off:hdr_len + type_off + type_len])

    def name(self, off: int) -> str:
        """A string by offset, continuing from the base's string section."""
        if off < self.str_base:
            assert self.base is not None
            return self.base.name(off)
        return _string(self.strings, off - self.str_base)

    def _parse(self, data: bytes) -> None:
        """Decode every btf_type record of the type section."""
        pos = 0
        while pos < len(data):
            name_off, info, size_or_type = TYPE.unpack_from(data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            pos += TYPE.size
            fixed, per = EXTRA.get(kind, (0, 0))
            extra = data[pos:pos + fixed + per * vlen]
            pos += fixed + per * vlen
            self.types.append(self._record(kind, kflag, vlen, name_off, size_or_type, extra))

    def _record(self, kind: int, kflag: int, vlen: int, name_off: int, size_or_type: int,
                extra: bytes) -> BtfType:
        """One BtfType from a decoded record."""
        tid = self.first_id + len(self.types)
        name = self.name(name_off)
        if kind == Kind.ARRAY:
            elem, _index_type, nelems = struct.unpack_from("<III", extra)
            return BtfType(tid, kind, name, self.index, ref=elem, nelems=nelems)
        if kind in (Kind.STRUCT, Kind.UNION):
            members = tuple(self._member(extra, i, kflag) for i in range(vlen))
            return BtfType(tid, kind, name, self.index, size=size_or_type, members=members)
        if kind == Kind.INT:
            encoding = (struct.unpack_from("<I", extra)[0] >> 24) & 0xF
            return BtfType(tid, kind, name, self.index, size=size_or_type, encoding=encoding)
        if kind in (Kind.ENUM, Kind.ENUM64, Kind.FLOAT, Kind.DATASEC):
            return BtfType(tid, kind, name, self.index, size=size_or_type, encoding=kflag)
        return BtfType(tid, kind, name, self.index, ref=size_or_type)

    def _member(self, extra: bytes, i: int, kflag: int) -> BtfMember:
        """Member *i*; with kind_flag the offset packs bitfield_size << 24 | bit_offset."""
        name_off, type_id, offset = struct.unpack_from("<III", extra, 12 * i)
        if kflag:
            return BtfMember(self.name(name_off), type_id, offset & 0xFFFFFF, offset >> 24)
        return BtfMember(self.name(name_off), type_id, offset)

    def get(self, tid: int) -> BtfType | None:
        """Type *tid* as seen from this layer (base ids first); None for void (0)."""
        if tid == 0:
            return None
        if tid < self.first_id:
            assert self.base is not None
            return self.base.get(tid)
        try:
            return self.types[tid - self.first_id]
        except IndexError:
            raise BtfError(f"BTF type id {tid} out of range in layer {self.index}") from None


class Btf:
    """vmlinux BTF plus any number of module BTFs split on top of it."""

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers
        self._by_name: dict[str, list[BtfType]] | None = None

    @classmethod
    def load(cls, base: bytes, splits: list[bytes] | tuple[bytes, ...] = ()) -> Btf:
        """Parse vmlinux's BTF *base* and each module's split BTF in *splits*."""
        vmlinux = _Layer(base, 0, None)
        return cls([vmlinux] + [_Layer(blob, i + 1, vmlinux) for i, blob in enumerate(splits)])

    # -- lookup ---------------------------------------------------------------

    def type_by_id(self, tid: int, layer: int = 0) -> BtfType | None:
        """Type *tid* resolved in *layer* (0 = vmlinux); None for void."""
        return self.layers[layer].get(tid)

    def _index(self) -> dict[str, list[BtfType]]:
        """name -> types with that name, vmlinux first, then modules in load order."""
        if self._by_name is None:
            self._by_name = {}
            for layer in self.layers:
                for t in layer.types:
                    if t.name:
                        self._by_name.setdefault(t.name, []).append(t)
        return self._by_name

    def find(self, spec: str) -> BtfType:
        """The type ``"struct kvm"``, ``"union x"``, ``"enum y"`` or a bare name.

        A complete definition wins over a forward declaration.
        """
        word, _, name = spec.partition(" ")
        kinds = PREFIX.get(word) if name else None
        name = name if kinds else spec
        cands = [t for t in self._index().get(name, [])
                 if (t.kind in kinds if kinds else t.kind not in (Kind.FWD, Kind.FUNC,
                                                                   Kind.VAR, Kind.DECL_TAG))]
        if not cands:
            close = difflib.get_close_matches(name, list(self._index()), n=5)
            raise BtfError(f"no type {spec!r} in the kernel's BTF; close names: "
                           f"{', '.join(close) or 'none'}")
        return cands[0]

    def resolve(self, t: BtfType | None) -> BtfType | None:
        """Skip typedefs, const, volatile, restrict and type tags."""
        while t is not None and t.kind in MODIFIERS:
            t = self.type_by_id(t.ref, t.layer)
        return t

    def _as_type(self, spec: str | BtfType) -> BtfType:
        """A spec string or a type, as a type."""
        return self.find(spec) if isinstance(spec, str) else spec

    # -- sizes and offsets ----------------------------------------------------

    def sizeof(self, spec: str | BtfType) -> int:
        """Size in bytes of a type, like C's sizeof."""
        t = self.resolve(self._as_type(spec))
        if t is None:
            raise BtfError("sizeof(void)")
        if t.kind == Kind.PTR:
            return POINTER_SIZE
        if t.kind == Kind.ARRAY:
            return t.nelems * self.sizeof(self._ref(t))
        if t.kind in (Kind.FWD, Kind.FUNC, Kind.FUNC_PROTO):
            raise BtfError(f"{t.describe()} has no size (kind {t.kind})")
        return t.size

    def _ref(self, t: BtfType) -> BtfType:
        """The type *t* refers to (array element, pointee), never void."""
        r = self.type_by_id(t.ref, t.layer)
        if r is None:
            raise BtfError(f"{t.describe()} refers to void")
        return r

    def member(self, spec: str | BtfType, path: str) -> tuple[int, int, BtfType]:
        """(bit offset, bitfield size, member type) of a dotted *path* in a struct.

        Path parts are member names, with ``[i]`` array indexes: ``"vmcb01.pa"``,
        ``"arch.mmu"``, ``"memslots[0]"``.  Anonymous struct/union members are
        searched through.  Pointers are not followed.
        """
        top = self._as_type(spec)
        cur: BtfType = top
        bits, bitfield = 0, 0
        for part in path.split("."):
            m = PATH_PART.match(part)
            if not m:
                raise BtfError(f"bad member path {path!r} (at {part!r})")
            off, bitfield, cur = self._lookup(cur, m.group(1), top, path)
            bits += off
            for index in re.findall(r"\[(\d+)\]", m.group(2)):
                bits, cur = self._index_array(cur, int(index), bits, top, path)
        return bits, bitfield, cur

    def _lookup(self, t: BtfType, name: str, top: BtfType,
                path: str) -> tuple[int, int, BtfType]:
        """Find member *name* in struct/union *t*, also inside anonymous members."""
        r = self.resolve(t)
        if r is None or r.kind not in (Kind.STRUCT, Kind.UNION):
            raise BtfError(f"{top.describe()}: {path!r}: {t.describe()} is not a struct or "
                           f"union, cannot take member {name!r}")
        found = self._search(r, name)
        if found is None:
            names = self._member_names(r)
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
            raise BtfError(f"{r.describe()} has no member {name!r} (path {path!r} in "
                           f"{top.describe()}); close names: {', '.join(close) or 'none'}")
        return found

    def _search(self, r: BtfType, name: str) -> tuple[int, int, BtfType] | None:
        """Depth-first search of *name* in *r*'s members and anonymous members."""
        for m in r.members:
            mtype = self.type_by_id(m.type_id, r.layer)
            if m.name == name and mtype is not None:
                return m.bit_offset, m.bitfield_size, mtype
            inner = self.resolve(mtype)
            if not m.name and inner is not None and inner.kind in (Kind.STRUCT, Kind.UNION):
                hit = self._search(inner, name)
                if hit is not None:
                    return m.bit_offset + hit[0], hit[1], hit[2]
        return None

    def _member_names(self, r: BtfType) -> list[str]:
        """Every member name of *r*, anonymous members flattened."""
        names = []
        for m in r.members:
            inner = self.resolve(self.type_by_id(m.type_id, r.layer))
            if not m.name and inner is not None and inner.kind in (Kind.STRUCT, Kind.UNION):
                names += self._member_names(inner)
            elif m.name:
                names.append(m.name)
        return names

    def _index_array(self, t: BtfType, index: int, bits: int, top: BtfType,
                     path: str) -> tuple[int, BtfType]:
        """Bit offset and element type of ``t[index]``; bounds-checked."""
        r = self.resolve(t)
        if r is None or r.kind != Kind.ARRAY:
            raise BtfError(f"{top.describe()}: {path!r}: {t.describe()} is not an array")
        if not 0 <= index < r.nelems and r.nelems:
            raise BtfError(f"{top.describe()}: {path!r}: index {index} out of bounds "
                           f"[0, {r.nelems})")
        elem = self._ref(r)
        return bits + 8 * index * self.sizeof(elem), elem

    def offsetof(self, spec: str | BtfType, path: str) -> int:
        """Byte offset of a (dotted) member path, like C's offsetof; no bitfields."""
        bits, bitfield, _t = self.member(spec, path)
        if bitfield or bits % 8:
            raise BtfError(f"{self._as_type(spec).describe()}.{path} is a bitfield "
                           f"(bit offset {bits}, {bitfield} bits)")
        return bits // 8

    def member_type(self, spec: str | BtfType, path: str) -> BtfType:
        """The declared type of a (dotted) member path."""
        return self.member(spec, path)[2]

    def is_signed(self, spec: str | BtfType) -> bool:
        """Whether an integer or enum type (after typedefs) is signed."""
        t = self.resolve(self._as_type(spec))
        return t is not None and t.kind in (Kind.INT, Kind.ENUM, Kind.ENUM64) \
            and bool(t.encoding & 1)

    def pointee(self, t: BtfType) -> BtfType | None:
        """What pointer *t* (after typedefs) points to, modifiers skipped; None for void *."""
        r = self.resolve(t)
        if r is None or r.kind != Kind.PTR:
            raise BtfError(f"{t.describe()} is not a pointer")
        return self.resolve(self.type_by_id(r.ref, r.layer))
