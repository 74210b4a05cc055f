"""A reader of CTF (Compact C Type Format), the ``.SUNW_ctf`` section of BSD kernels.

OpenBSD's kernel keeps CTF instead of DWARF: the build runs ``ctfconv`` and
adds the result as ``.SUNW_ctf`` (``ctfstrip``).  This reader exposes the same
interface as :class:`harness.btf.Btf` (``find``, ``sizeof``, ``offsetof`` with
dotted paths and array indexes, ``member_type``, ``is_signed``, ``pointee``,
``member``), so :class:`harness.discovery.linux_kvm_common.KernelReader` and
the OpenBSD discovery read kernel structures over either.

The format (OpenBSD ``sys/sys/ctf.h`` v1.5; FreeBSD/illumos ``ctf.h`` agree on
version 2; FreeBSD's ``sys/sys/ctf.h`` adds version 3, below):

* header, 36 bytes, never compressed: u16 magic 0xcff1, u8 version 2, u8 flags
  (bit 0 ``CTF_F_COMPRESS``: the body is one zlib stream), u32 parlabel,
  parname, lbloff, objtoff, funcoff, typeoff, stroff, strlen; offsets count from
  the start of the (uncompressed) body;
* a type record: u32 name, u16 info (kind bits 15..11, root bit 10, vlen bits
  9..0), u16 size-or-type; when that field is 0xffff (``CTF_LSIZE_SENT``) two
  u32 (size high, low) follow (the long form);
* kind data: INTEGER/FLOAT one u32 ``encoding << 24 | offset << 16 | bits``;
  ARRAY u16 contents, u16 index, u32 nelems; STRUCT/UNION *vlen* members of 8
  bytes (u32 name, u16 type, u16 bit offset) when the size is below 8192, else
  16 bytes (u32 name, u16 type, u16 pad, u32 offset high, u32 low); ENUM *vlen*
  (u32 name, i32 value); FUNCTION *vlen* u16 argument types, padded to 4 bytes.

What differs between the flavours (:data:`FLAVOURS`):

* ``openbsd`` (ctfconv): an INTEGER's or FLOAT's size field holds *bits*, not
  bytes (``parse_base``: ``bits = 8 * DW_AT_byte_size``); base types are named
  after the DWARF encoding (``signed``, ``unsigned``, ``char``); type 1 is a
  fake INTEGER ``void`` of size 0; type ids use all 16 bits (no parent/child
  split, parlabel and parname are 0); ctfconv never writes FORWARD: an
  incomplete struct is a STRUCT of size 0 without members.
* ``freebsd`` (illumos ctfconvert, version 2): sizes are bytes; a module's
  container may be a *child* of the kernel's (parname set): ids above 0x7fff
  are the child's own (``CTF_TYPE_ISCHILD``), ids below resolve in the parent.

Version 3 (FreeBSD 14 and later: ``ctf_stype_v3``, ``ctf_member_v3``...) widens
every type id, the info word and the size to 32 bits: a record is u32 name,
u32 info (kind bits 31..26, root bit 25, vlen bits 23..0), u32 size-or-type,
long form when that is 0xffffffff (``CTF_V3_LSIZE_SENT``); arrays are three
u32; members are u32 name, type, bit offset (16 bytes with a 64-bit offset
from ``CTF_V3_LSTRUCT_THRESH`` = 2**29 bytes on); function arguments are u32;
child ids have bit 31 set.  The version comes from the header, so both
versions read with either flavour.

>>> ctf = Ctf.load(section_bytes)                                  # doctest: +SKIP
>>> ctf.offsetof("struct vm", "vm_link")                           # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import io
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Protocol

from harness.errors import InfraError
from harness.ktypes import TypeLookupError
from harness.registry import Registry

__all__ = ["Ctf", "CtfType", "CtfMember", "CtfError", "CtfLookupError", "Kind", "Flavour",
           "FLAVOURS", "CTF_MAGIC", "CTF_VERSION", "ctf_section", "POINTER_SIZE", "TypeTable",
           "INT_SIGNED", "INT_CHAR", "INT_BOOL"]

CTF_MAGIC = 0xCFF1
CTF_VERSION = 2
CTF_VERSIONS = (2, 3)
CTF_F_COMPRESS = 0x1
HEADER = struct.Struct("<HBB8I")     # magic version flags, parlabel parname lbloff objtoff
#                                      funcoff typeoff stroff strlen
LSIZE = struct.Struct("<II")         # size high, size low (long form)
ENUM = struct.Struct("<Ii")          # name value
NAME_EXTERNAL = 1 << 31              # the name lives in the ELF string table
CHILD_BIT = 0x8000                   # FreeBSD/illumos v2: id > 0x7fff is the child's


@dataclass(frozen=True)
class Encoding:
    """The record shapes of one CTF version (``ctf_stype_vN``, ``ctf_member_vN``...)."""

    version: int
    stype: struct.Struct        # name info size-or-type
    lsize_sent: int             # size-or-type value that announces the long form
    kind_shift: int             # info: kind = info >> kind_shift
    vlen_mask: int              # info: vlen = info & vlen_mask
    lstruct_thresh: int         # structs this big or bigger have long members
    member: struct.Struct       # name type offset(bits)
    lmember: struct.Struct      # name type [pad] offset-high offset-low
    array: struct.Struct        # contents index nelems
    arg: int                    # bytes per function argument type
    child_bit: int              # ids with this bit set belong to a child container


ENCODINGS = {
    2: Encoding(2, struct.Struct("<IHH"), 0xFFFF, 11, 0x3FF, 8192, struct.Struct("<IHH"),
                struct.Struct("<IHHII"), struct.Struct("<HHI"), 2, CHILD_BIT),
    3: Encoding(3, struct.Struct("<III"), 0xFFFFFFFF, 26, 0xFFFFFF, 1 << 29,
                struct.Struct("<III"), struct.Struct("<IIII"), struct.Struct("<III"), 4,
                0x8000_0000),
}
POINTER_SIZE = 8                     # amd64
INT_SIGNED = 0x1                     # CTF_INT_SIGNED (encoding bits 31..24)
INT_CHAR, INT_BOOL = 0x2, 0x4        # CTF_INT_CHAR, CTF_INT_BOOL
PATH_PART = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)((?:\[\d+\])*)$")


class Kind:
    """CTF_K_* (ctf.h)."""

    UNKNOWN, INTEGER, FLOAT, POINTER, ARRAY, FUNCTION, STRUCT, UNION = 0, 1, 2, 3, 4, 5, 6, 7
    ENUM, FORWARD, TYPEDEF, VOLATILE, CONST, RESTRICT = 8, 9, 10, 11, 12, 13


SIZED = frozenset({Kind.INTEGER, Kind.FLOAT, Kind.STRUCT, Kind.UNION, Kind.ENUM})
MODIFIERS = frozenset({Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT})
PREFIX = {"struct": Kind.STRUCT, "union": Kind.UNION, "enum": Kind.ENUM}
KIND_NAMES = {Kind.POINTER: "<pointer>", Kind.ARRAY: "<array>", Kind.FUNCTION: "<function>",
              Kind.VOLATILE: "<volatile>", Kind.CONST: "<const>", Kind.RESTRICT: "<restrict>"}


class CtfError(InfraError):
    """The CTF section is malformed, or lacks a type or member the harness needs."""


class CtfLookupError(CtfError, TypeLookupError):
    """A type or member is not in the kernel's CTF (what ``KernelReader.has`` probes)."""


@dataclass(frozen=True)
class Flavour:
    """How one CTF writer differs from the format description."""

    name: str
    base_size_in_bits: bool   # INTEGER/FLOAT size field in bits (OpenBSD ctfconv)
    child_ids: bool           # ids above 0x7fff belong to a child container (parname)
    description: str


FLAVOURS: Registry[Flavour] = Registry("CTF flavour")
FLAVOURS.add("openbsd", Flavour("openbsd", True, False,
                                "OpenBSD ctfconv: base type sizes in bits, 16-bit ids, "
                                "no parent container, no FORWARD"))
FLAVOURS.add("freebsd", Flavour("freebsd", False, True,
                                "FreeBSD/illumos ctfconvert version 2: sizes in bytes, "
                                "child containers (ids > 0x7fff) over a parent"))


@dataclass(frozen=True)
class CtfMember:
    """A struct/union member: *bit_offset* from the start of its container."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0    # CTF has no bitfield width in members: 0; DWARF's DW_AT_bit_size


@dataclass(frozen=True)
class CtfType:
    """One type record, shaped like :class:`harness.btf.BtfType`.

    ``size`` is the byte size (INTEGER/FLOAT already converted from bits for the
    OpenBSD flavour), ``ref`` the referenced id (POINTER, TYPEDEF, qualifiers,
    array element), ``nelems`` an ARRAY's length, ``encoding`` an INTEGER's
    CTF_INT_* bits.  *layer* 0 is the container itself, 1 its parent.
    """

    id: int
    kind: int
    name: str
    layer: int = 0
    size: int = 0
    ref: int = 0
    nelems: int = 0
    encoding: int = 0
    bits: int = 0
    members: tuple[CtfMember, ...] = field(default=(), repr=False)
    enumerators: tuple[tuple[str, int], ...] = field(default=(), repr=False)

    def describe(self) -> str:
        """``struct vm``, ``union foo`` or the bare name, as C spells it."""
        for word, kind in PREFIX.items():
            if self.kind == kind:
                return f"{word} {self.name or '<anon>'}"
        return self.name or KIND_NAMES.get(self.kind, f"<kind {self.kind}>")

    @property
    def incomplete(self) -> bool:
        """A forward declaration: FORWARD, or OpenBSD's STRUCT/UNION of size 0, no members."""
        return self.kind == Kind.FORWARD or (
            self.kind in (Kind.STRUCT, Kind.UNION) and self.size == 0 and not self.members)


def _string(strings: bytes, off: int) -> str:
    """The NUL-terminated string at *off* of the CTF string table."""
    if off & NAME_EXTERNAL:
        return f"<elf strtab {off & ~NAME_EXTERNAL:#x}>"
    if off >= len(strings):
        raise CtfError(f"CTF name offset {off:#x} beyond the string table ({len(strings)} B)")
    end = strings.find(b"\0", off)
    return strings[off:end if end >= 0 else len(strings)].decode("utf-8", "replace")


def _body(blob: bytes) -> tuple[tuple[int, ...], bytes]:
    """The header fields and the (decompressed) body of a CTF container."""
    if len(blob) < HEADER.size:
        raise CtfError(f"CTF blob of {len(blob)} bytes is shorter than its header")
    hdr = HEADER.unpack_from(blob)
    magic, version, flags = hdr[:3]
    if magic != CTF_MAGIC:
        raise CtfError(f"not CTF: magic {magic:#x} (want {CTF_MAGIC:#x})")
    if version not in CTF_VERSIONS:
        raise CtfError(f"CTF version {version} is not supported (versions 2 and 3 are: "
                       "OpenBSD and older FreeBSD write 2, FreeBSD 14 and later 3)")
    body = blob[HEADER.size:]
    if flags & CTF_F_COMPRESS:
        try:
            body = zlib.decompress(body)
        except zlib.error as exc:
            raise CtfError(f"CTF body does not inflate: {exc}") from exc
    stroff, strlen = hdr[9], hdr[10]
    if stroff + strlen > len(body):
        raise CtfError(f"CTF string table [{stroff:#x}, +{strlen:#x}) beyond the body "
                       f"({len(body)} B)")
    return hdr, body


class TypeTable(Protocol):
    """Where :class:`Ctf` gets its type records: a CTF container, or another table
    of the same records (:mod:`harness.dwarf` builds one from DWARF)."""

    layer: int          # 0: the container itself, 1: its parent
    source: str         # what the records came from, for messages: "CTF", "DWARF"

    def get(self, tid: int) -> CtfType:
        """The type *tid* (an error if there is none)."""
        ...

    def local(self, tid: int) -> bool:
        """Whether id *tid* is one of this table's own (not the parent's)."""
        ...

    def loaded(self) -> list[CtfType]:
        """The types read so far (all of them for a CTF container)."""
        ...

    def named(self) -> dict[str, list[CtfType]]:
        """name -> the types with that name, in the table's order."""
        ...


class _Container:
    """The types and strings of one CTF container."""

    source = "CTF"

    def __init__(self, blob: bytes, flavour: Flavour, layer: int) -> None:
        hdr, body = _body(blob)
        self.flavour = flavour
        self.layer = layer
        self.enc = ENCODINGS[hdr[1]]
        self.parname = hdr[4]
        typeoff, stroff, strlen = hdr[8], hdr[9], hdr[10]
        if not typeoff <= stroff:
            raise CtfError(f"CTF type section {typeoff:#x} after the strings {stroff:#x}")
        self.strings = body[stroff:stroff + strlen]
        self.parent_name = _string(self.strings, self.parname) if self.parname else ""
        self.is_child = flavour.child_ids and bool(self.parname)
        self.types: list[CtfType] = []
        self._parse(body[typeoff:stroff])

    def _parse(self, data: bytes) -> None:
        """Decode every type record."""
        pos = 0
        while pos < len(data):
            if pos + self.enc.stype.size > len(data):
                raise CtfError(f"CTF type record at {pos:#x} truncated")
            tid = len(self.types) + 1 + (self.enc.child_bit if self.is_child else 0)
            rec, pos = _record(data, pos, tid, self)
            self.types.append(rec)

    def name(self, off: int) -> str:
        """A name from this container's string table."""
        return _string(self.strings, off)

    def loaded(self) -> list[CtfType]:
        """Every type of the container."""
        return self.types

    def named(self) -> dict[str, list[CtfType]]:
        """name -> types with that name, in id order."""
        out: dict[str, list[CtfType]] = {}
        for t in self.types:
            if t.name:
                out.setdefault(t.name, []).append(t)
        return out

    def local(self, tid: int) -> bool:
        """Whether id *tid* is one of this container's own."""
        return not self.is_child or tid >= self.enc.child_bit

    def get(self, tid: int) -> CtfType:
        """This container's type *tid*."""
        index = (tid & ~self.enc.child_bit if self.is_child else tid) - 1
        if not 0 <= index < len(self.types):
            raise CtfError(f"CTF type id {tid} out of range (container has "
                           f"{len(self.types)} types)")
        return self.types[index]


def _record(data: bytes, pos: int, tid: int, c: _Container) -> tuple[CtfType, int]:
    """The type record at *pos* and the position after it and its kind data."""
    enc = c.enc
    name_off, info, size_or_type = enc.stype.unpack_from(data, pos)
    kind, vlen = info >> enc.kind_shift, info & enc.vlen_mask
    pos += enc.stype.size
    size = size_or_type
    if size_or_type == enc.lsize_sent:
        hi, lo = LSIZE.unpack_from(data, pos)
        size, pos = hi << 32 | lo, pos + LSIZE.size
    base = dict(id=tid, kind=kind, name=c.name(name_off), layer=c.layer)
    try:
        if kind in (Kind.INTEGER, Kind.FLOAT):
            (enc,) = struct.unpack_from("<I", data, pos)
            bits = enc & 0xFFFF
            nbytes = size // 8 if c.flavour.base_size_in_bits else size
            return CtfType(**base, size=nbytes, encoding=enc >> 24, bits=bits), pos + 4
        if kind == Kind.ARRAY:
            contents, _index, nelems = enc.array.unpack_from(data, pos)
            return CtfType(**base, ref=contents, nelems=nelems), pos + enc.array.size
        if kind in (Kind.STRUCT, Kind.UNION):
            members, pos = _members(data, pos, vlen, size, c)
            return CtfType(**base, size=size, members=members), pos
        if kind == Kind.ENUM:
            enums = tuple((c.name(n), v) for n, v in
                          (ENUM.unpack_from(data, pos + 8 * i) for i in range(vlen)))
            return CtfType(**base, size=size, enumerators=enums), pos + ENUM.size * vlen
        if kind == Kind.FUNCTION:
            args = enc.arg * vlen
            return CtfType(**base, ref=size), pos + args + (-args % 4)
    except struct.error as exc:
        raise CtfError(f"CTF type {tid} ({kind=}) truncated: {exc}") from exc
    if kind in SIZED:
        return CtfType(**base, size=size), pos
    return CtfType(**base, ref=size), pos


def _members(data: bytes, pos: int, vlen: int, size: int,
             c: _Container) -> tuple[tuple[CtfMember, ...], int]:
    """*vlen* members; long ones when the struct is at least the version's threshold."""
    out = []
    enc = c.enc
    for _ in range(vlen):
        if size < enc.lstruct_thresh:
            name, mtype, off = enc.member.unpack_from(data, pos)
            pos += enc.member.size
        else:
            *head, hi, lo = enc.lmember.unpack_from(data, pos)
            name, mtype = head[0], head[1]
            off, pos = hi << 32 | lo, pos + enc.lmember.size
        out.append(CtfMember(c.name(name), mtype, off))
    return tuple(out), pos


class Ctf:
    """The types of one CTF container (and its parent, for a FreeBSD child).

    Any :class:`TypeTable` serves as the container: the lookups below work on
    the records, whatever section they were read from.
    """

    def __init__(self, container: TypeTable, parent: TypeTable | None = None) -> None:
        self.container = container
        self.parent = parent
        self._by_name: dict[str, list[CtfType]] | None = None
        self._members: dict[tuple[str, str], tuple[int, int, CtfType]] = {}  # member() by name

    @classmethod
    def load(cls, blob: bytes, *, flavour: str = "openbsd", parent: bytes | None = None) -> Ctf:
        """Parse a ``.SUNW_ctf`` section; *parent* is the kernel's for a FreeBSD module."""
        fl = FLAVOURS[flavour]
        child = _Container(blob, fl, 0)
        if child.is_child and parent is None:
            raise CtfError(f"this CTF container is a child of {child.parent_name!r}: "
                           "give the parent container too")
        par = _Container(parent, fl, 1) if parent is not None else None
        return cls(child, par)

    @classmethod
    def from_elf(cls, elf: bytes, *, flavour: str = "openbsd") -> Ctf:
        """The types of an ELF file's ``.SUNW_ctf`` (OpenBSD's ``/bsd.booted``)."""
        return cls.load(ctf_section(elf), flavour=flavour)

    # -- lookup ---------------------------------------------------------------

    @property
    def types(self) -> list[CtfType]:
        """Every type, the container's then the parent's."""
        return self.container.loaded() + (self.parent.loaded() if self.parent else [])

    def type_by_id(self, tid: int, layer: int = 0) -> CtfType | None:
        """Type *tid* as seen from *layer*'s container; None for 0 (no type)."""
        if tid == 0:
            return None
        c = self.container if layer == 0 else self.parent
        if c is None:
            raise CtfError(f"no type table at layer {layer}")
        if c.local(tid):
            return c.get(tid)
        if self.parent is None:
            raise CtfError(f"{c.source} type id {tid} is the parent's, and no parent was given")
        return self.parent.get(tid)

    def _index(self) -> dict[str, list[CtfType]]:
        """name -> types with that name."""
        if self._by_name is None:
            self._by_name = {}
            for table in (self.container, self.parent):
                for name, types in (table.named() if table is not None else {}).items():
                    self._by_name.setdefault(name, []).extend(types)
        return self._by_name

    def find(self, spec: str) -> CtfType:
        """``"struct vm"``, ``"union x"``, ``"enum y"`` or a bare name (typedef, base type).

        A complete definition wins over an incomplete one (FORWARD, or
        OpenBSD's empty STRUCT).
        """
        word, _, name = spec.partition(" ")
        kind = PREFIX.get(word) if name else None
        name = name if kind is not None else spec
        cands = [t for t in self._index().get(name, [])
                 if (t.kind in (kind, Kind.FORWARD) if kind is not None
                     else t.kind not in (Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.FORWARD,
                                         Kind.FUNCTION))]
        if not cands:
            close = difflib.get_close_matches(name, list(self._index()), n=5)
            raise CtfLookupError(f"no type {spec!r} in the kernel's {self.container.source}; "
                                 f"close names: {', '.join(close) or 'none'}")
        complete = [t for t in cands if not t.incomplete]
        return (complete or cands)[0]

    def resolve(self, t: CtfType | None) -> CtfType | None:
        """Skip typedefs, const, volatile and restrict."""
        seen = 0
        while t is not None and t.kind in MODIFIERS:
            t = self.type_by_id(t.ref, t.layer)
            seen += 1
            if seen > 64:
                raise CtfError("CTF typedef chain longer than 64 (a loop?)")
        return t

    def _as_type(self, spec: str | CtfType) -> CtfType:
        return self.find(spec) if isinstance(spec, str) else spec

    # -- sizes and offsets ----------------------------------------------------

    def sizeof(self, spec: str | CtfType) -> int:
        """Size in bytes of a type, like C's sizeof."""
        t = self.resolve(self._as_type(spec))
        if t is None:
            raise CtfError("sizeof(void)")
        if t.kind == Kind.POINTER:
            return POINTER_SIZE
        if t.kind == Kind.ARRAY:
            return t.nelems * self.sizeof(self._ref(t))
        if t.incomplete or t.kind in (Kind.FUNCTION, Kind.UNKNOWN):
            raise CtfLookupError(f"{t.describe()} has no size (incomplete or kind {t.kind})")
        return t.size

    def _ref(self, t: CtfType) -> CtfType:
        """The type *t* refers to (array element, pointee), never void."""
        r = self.type_by_id(t.ref, t.layer)
        if r is None:
            raise CtfError(f"{t.describe()} refers to type 0")
        return r

    def member(self, spec: str | CtfType, path: str) -> tuple[int, int, CtfType]:
        """(bit offset, bitfield width (0: not a bitfield), member type) of a dotted *path*.

        Parts are member names with ``[i]`` indexes: ``"vm_memranges[2].vmr_gpa"``,
        ``"vm_link.sle_next"``.  Anonymous struct/union members are searched
        through; pointers are not followed.  Lookups by type name are remembered
        (discovery asks the same few paths for every node of a list or tree).
        """
        if isinstance(spec, str):
            key = (spec, path)
            hit = self._members.get(key)
            if hit is None:
                hit = self._members[key] = self._member(self._as_type(spec), path)
            return hit
        return self._member(spec, path)

    def _member(self, top: CtfType, path: str) -> tuple[int, int, CtfType]:
        cur = top
        bits, bitfield = 0, 0
        for part in path.split("."):
            m = PATH_PART.match(part)
            if not m:
                raise CtfLookupError(f"bad member path {path!r} (at {part!r})")
            off, cur, bitfield = self._lookup(cur, m.group(1), top, path)
            bits += off
            for index in re.findall(r"\[(\d+)\]", m.group(2)):
                bits, cur = self._index_array(cur, int(index), bits, top, path)
        return bits, bitfield, cur

    def _lookup(self, t: CtfType, name: str, top: CtfType,
                path: str) -> tuple[int, CtfType, int]:
        """Member *name* of struct/union *t*, also inside anonymous members."""
        r = self.resolve(t)
        if r is None or r.kind not in (Kind.STRUCT, Kind.UNION):
            raise CtfLookupError(f"{top.describe()}: {path!r}: {t.describe()} is not a struct or "
                           f"union, cannot take member {name!r}")
        if r.incomplete:
            r = self.find(r.describe())
        found = self._search(r, name)
        if found is None:
            close = difflib.get_close_matches(name, self._member_names(r), n=5, cutoff=0.5)
            raise CtfLookupError(f"{r.describe()} has no member {name!r} (path {path!r} in "
                           f"{top.describe()}); close names: {', '.join(close) or 'none'}")
        return found

    def _search(self, r: CtfType, name: str) -> tuple[int, CtfType, int] | None:
        """Depth-first search of *name* in *r*'s members and anonymous members:
        (bit offset, type, bitfield width)."""
        for m in r.members:
            mtype = self.type_by_id(m.type_id, r.layer)
            if m.name == name and mtype is not None:
                return m.bit_offset, mtype, m.bitfield_size
            inner = self.resolve(mtype)
            if not m.name and inner is not None and inner.kind in (Kind.STRUCT, Kind.UNION):
                hit = self._search(inner, name)
                if hit is not None:
                    return m.bit_offset + hit[0], hit[1], hit[2]
        return None

    def _member_names(self, r: CtfType) -> list[str]:
        """Every member name of *r*, anonymous members flattened."""
        names = []
        for m in r.members:
            inner = self.resolve(self.type_by_id(m.type_id, r.layer))
            if not m.name and inner is not None and inner.kind in (Kind.STRUCT, Kind.UNION):
                names += self._member_names(inner)
            elif m.name:
                names.append(m.name)
        return names

    def member_names(self, spec: str | CtfType) -> list[str]:
        """The member names of a struct or union, anonymous members flattened."""
        r = self.resolve(self._as_type(spec))
        if r is None or r.kind not in (Kind.STRUCT, Kind.UNION):
            raise CtfLookupError(f"{spec!r} is not a struct or union")
        return self._member_names(r)

    def _index_array(self, t: CtfType, index: int, bits: int, top: CtfType,
                     path: str) -> tuple[int, CtfType]:
        """Bit offset and element type of ``t[index]``; bounds-checked."""
        r = self.resolve(t)
        if r is None or r.kind != Kind.ARRAY:
            raise CtfLookupError(f"{top.describe()}: {path!r}: {t.describe()} is not an array")
        if r.nelems and not 0 <= index < r.nelems:
            raise CtfLookupError(f"{top.describe()}: {path!r}: index {index} out of bounds "
                           f"[0, {r.nelems})")
        elem = self._ref(r)
        return bits + 8 * index * self.sizeof(elem), elem

    def offsetof(self, spec: str | CtfType, path: str) -> int:
        """Byte offset of a (dotted) member path, like C's offsetof."""
        bits, bitfield, _t = self.member(spec, path)
        if bits % 8 or bitfield:
            raise CtfLookupError(f"{self._as_type(spec).describe()}.{path} is at bit {bits}, "
                           "not on a byte (a bitfield)")
        return bits // 8

    def member_type(self, spec: str | CtfType, path: str) -> CtfType:
        """The declared type of a (dotted) member path."""
        return self.member(spec, path)[2]

    def is_signed(self, spec: str | CtfType) -> bool:
        """Whether an integer type (after typedefs) is signed; enums count as signed."""
        t = self.resolve(self._as_type(spec))
        if t is None:
            return False
        if t.kind == Kind.ENUM:
            return True
        return t.kind == Kind.INTEGER and bool(t.encoding & INT_SIGNED)

    def pointee(self, t: CtfType) -> CtfType | None:
        """What pointer *t* (after typedefs) points to, qualifiers skipped.

        None for ``void *`` (type 0, or OpenBSD's fake INTEGER ``void`` of size 0).
        """
        r = self.resolve(t)
        if r is None or r.kind != Kind.POINTER:
            raise CtfError(f"{t.describe()} is not a pointer")
        p = self.resolve(self.type_by_id(r.ref, r.layer))
        if p is not None and p.kind == Kind.INTEGER and p.name == "void" and p.size == 0:
            return None
        return p


def ctf_section(elf: bytes) -> bytes:
    """The raw ``.SUNW_ctf`` section of an ELF file (OpenBSD ``/bsd.booted``)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        section = ELFFile(io.BytesIO(elf)).get_section_by_name(".SUNW_ctf")
    except ELFError as exc:
        raise CtfError(f"not an ELF file: {exc}") from exc
    if section is None:
        raise CtfError("the ELF file has no .SUNW_ctf section (a kernel without CTF, or "
                       "/bsd after ctfstrip -S?)")
    return bytes(section.data())
