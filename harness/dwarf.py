"""Kernel types from DWARF (``.debug_info``), for kernels without CTF or BTF (DragonFly).

DragonFly's kernel carries no CTF; its types are in the DWARF of the build's
``kernel.debug``.  This module reads that DWARF with pyelftools and turns each
type DIE into the records :class:`harness.ctf.Ctf` already works on
(:class:`~harness.ctf.CtfType`), so the lookups (``offsetof`` with dotted paths
and array indexes, ``sizeof``, ``member_type``, ``is_signed``, ``pointee``) are the
same code for CTF and DWARF, and :class:`~harness.discovery.linux_kvm_common.KernelReader`
reads over either (the :class:`harness.ktypes.KernelTypes` interface).

The mapping (DWARF 2 to 5, as gcc and clang write it):

* ``DW_TAG_base_type`` -> INTEGER (FLOAT for the float encodings) of
  ``DW_AT_byte_size``; ``DW_ATE_signed``/``signed_char`` set CTF_INT_SIGNED, the
  char encodings CTF_INT_CHAR, ``DW_ATE_boolean`` CTF_INT_BOOL;
* ``pointer_type`` -> POINTER (without ``DW_AT_type``: ``void *``); ``typedef``,
  ``const_type``, ``volatile_type``, ``restrict_type`` (``atomic_type`` as
  volatile) -> the modifier kinds;
* ``structure_type``/``class_type``/``union_type`` -> STRUCT/UNION with members
  at ``DW_AT_data_member_location`` (a constant, or DWARF 2's
  ``DW_OP_plus_uconst`` expression) and bitfields at ``DW_AT_data_bit_offset``
  (DWARF 4+) or from DWARF 2/3's big-endian ``DW_AT_bit_offset``; a
  ``DW_AT_declaration`` is a FORWARD;
* ``enumeration_type`` -> ENUM with its enumerators; ``array_type`` -> ARRAY per
  ``DW_TAG_subrange_type`` (``DW_AT_count``, or ``DW_AT_upper_bound`` + 1; neither:
  a flexible array of 0 elements), a multi-dimensional array as nested arrays;
* ``subroutine_type`` -> FUNCTION.

Type ids are the DIEs' ``.debug_info`` offsets (the inner dimensions of a
multi-dimensional array get ids above every offset).  Records are made on first
use; the name index lists the file-scope types of every compilation unit, the
first definition of each name first (a struct defined in many units is taken
from the first unit that completes it).

A kernel's DWARF is large: :func:`dwarf_subset` extracts once the closure of the
types discovery needs, :func:`subset_to_json` stores it and :func:`types_from_json`
loads it back in milliseconds.

>>> types = Dwarf.load_elf(open("kernel.debug", "rb").read())   # doctest: +SKIP
>>> types.offsetof("struct vm_map_entry", "aux.master_pde")       # doctest: +SKIP
24
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from harness.ctf import INT_BOOL, INT_CHAR, INT_SIGNED, Ctf, CtfError, CtfMember, CtfType, Kind

__all__ = ["Dwarf", "DwarfError", "DwarfTable", "RecordTable", "dwarf_subset",
           "subset_to_json", "types_from_json"]

# DW_ATE_* (DWARF 5 section 7.8)
ATE_BOOLEAN, ATE_SIGNED, ATE_SIGNED_CHAR, ATE_UNSIGNED_CHAR, ATE_UTF = 0x2, 0x5, 0x6, 0x8, 0x10
FLOAT_ENCODINGS = frozenset({0x3, 0x4, 0x9, 0xF})  # complex, float, imaginary, decimal float
DW_OP_PLUS_UCONST = 0x23
MODIFIER_TAGS = {"DW_TAG_typedef": Kind.TYPEDEF, "DW_TAG_const_type": Kind.CONST,
                 "DW_TAG_volatile_type": Kind.VOLATILE, "DW_TAG_restrict_type": Kind.RESTRICT,
                 "DW_TAG_atomic_type": Kind.VOLATILE, "DW_TAG_pointer_type": Kind.POINTER,
                 "DW_TAG_reference_type": Kind.POINTER,
                 "DW_TAG_rvalue_reference_type": Kind.POINTER}
AGGREGATE_TAGS = {"DW_TAG_structure_type": Kind.STRUCT, "DW_TAG_class_type": Kind.STRUCT,
                  "DW_TAG_union_type": Kind.UNION}
NAMED_TAGS = frozenset({"DW_TAG_base_type", "DW_TAG_typedef", "DW_TAG_enumeration_type",
                        *AGGREGATE_TAGS})
SYNTHETIC_BASE = 1 << 48        # ids of inner array dimensions: above every DIE offset
JSON_FORMAT = "slatcheck-types/1"


class DwarfError(CtfError):
    """The DWARF cannot be read, or a type DIE is malformed."""


def _encoding(ate: int) -> int:
    """CTF_INT_* bits for a base type's DW_ATE_* encoding.

    >>> _encoding(0x6) == INT_SIGNED | INT_CHAR
    True
    """
    out = INT_SIGNED if ate in (ATE_SIGNED, ATE_SIGNED_CHAR) else 0
    if ate in (ATE_SIGNED_CHAR, ATE_UNSIGNED_CHAR, ATE_UTF):
        out |= INT_CHAR
    return out | (INT_BOOL if ate == ATE_BOOLEAN else 0)


def _uleb(data: list[int], pos: int) -> int:
    """An unsigned LEB128 number at *pos* of *data*."""
    value, shift = 0, 0
    while pos < len(data):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value
        shift += 7
    raise DwarfError("truncated LEB128 in a location expression")


def _member_location(value: Any) -> int:
    """``DW_AT_data_member_location``: a constant, or ``DW_OP_plus_uconst n`` (DWARF 2)."""
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and value[0] == DW_OP_PLUS_UCONST:
        return _uleb(value, 1)
    raise DwarfError(f"member location {value!r} is not a constant offset")


class DwarfTable:
    """The type DIEs of one ELF file's DWARF as CTF-shaped records (a :class:`TypeTable`)."""

    layer = 0
    source = "DWARF"

    def __init__(self, dwarfinfo: Any) -> None:
        self.info = dwarfinfo
        self._types: dict[int, CtfType] = {}
        self._named: dict[str, list[CtfType]] | None = None
        self._next_synthetic = SYNTHETIC_BASE

    # -- the TypeTable protocol --------------------------------------------------

    def get(self, tid: int) -> CtfType:
        """The record of the type DIE at ``.debug_info`` offset *tid*."""
        if tid not in self._types:
            if tid >= SYNTHETIC_BASE:
                raise DwarfError(f"DWARF type id {tid:#x} was never made")
            self._types[tid] = self._convert(self._die(tid))
        return self._types[tid]

    def local(self, tid: int) -> bool:
        """Every id is this table's own."""
        return True

    def loaded(self) -> list[CtfType]:
        """The records made so far."""
        return list(self._types.values())

    def named(self) -> dict[str, list[CtfType]]:
        """name -> the file-scope types with that name, in unit order."""
        if self._named is None:
            self._named = {}
            for die in self._file_scope_types():
                name = self._name(die)
                if name:
                    self._named.setdefault(name, []).append(self.get(die.offset))
        return self._named

    # -- DIEs ------------------------------------------------------------------

    def _die(self, offset: int) -> Any:
        from elftools.common.exceptions import DWARFError, ELFParseError

        try:
            return self.info.get_DIE_from_refaddr(offset)
        except (DWARFError, ELFParseError, KeyError, IndexError) as exc:
            raise DwarfError(f"no DIE at .debug_info offset {offset:#x}: {exc}") from exc

    def _file_scope_types(self) -> Iterator[Any]:
        """Named type DIEs that are children of a unit's top DIE."""
        for cu in self.info.iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                if die.tag in NAMED_TAGS:
                    yield die

    @staticmethod
    def _name(die: Any) -> str:
        attr = die.attributes.get("DW_AT_name")
        if attr is None:
            return ""
        value = attr.value
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    @staticmethod
    def _int(die: Any, name: str, default: int = 0) -> int:
        attr = die.attributes.get(name)
        return int(attr.value) if attr is not None and isinstance(attr.value, int) else default

    @staticmethod
    def _ref(die: Any, name: str = "DW_AT_type") -> int:
        """The ``.debug_info`` offset a reference attribute names; 0 when absent (void)."""
        if name not in die.attributes:
            return 0
        return int(die.get_DIE_from_attribute(name).offset)

    # -- conversion --------------------------------------------------------------

    def _convert(self, die: Any) -> CtfType:
        """One type DIE as a record."""
        tag, tid, name = die.tag, die.offset, self._name(die)
        if tag == "DW_TAG_base_type":
            ate = self._int(die, "DW_AT_encoding")
            size = self._int(die, "DW_AT_byte_size")
            kind = Kind.FLOAT if ate in FLOAT_ENCODINGS else Kind.INTEGER
            return CtfType(tid, kind, name, size=size, encoding=_encoding(ate), bits=8 * size)
        if tag in MODIFIER_TAGS:
            return CtfType(tid, MODIFIER_TAGS[tag], name, ref=self._ref(die))
        if tag in AGGREGATE_TAGS:
            return self._aggregate(die, AGGREGATE_TAGS[tag], name)
        if tag == "DW_TAG_enumeration_type":
            enums = tuple((self._name(c), self._int(c, "DW_AT_const_value"))
                          for c in die.iter_children() if c.tag == "DW_TAG_enumerator")
            kind = Kind.FORWARD if "DW_AT_declaration" in die.attributes else Kind.ENUM
            return CtfType(tid, kind, name, size=self._int(die, "DW_AT_byte_size", 4),
                           encoding=INT_SIGNED, enumerators=enums)
        if tag == "DW_TAG_array_type":
            return self._array(die)
        if tag == "DW_TAG_subroutine_type":
            return CtfType(tid, Kind.FUNCTION, name, ref=self._ref(die))
        return CtfType(tid, Kind.UNKNOWN, name)

    def _aggregate(self, die: Any, kind: int, name: str) -> CtfType:
        """A struct or union and its members (a declaration is a FORWARD)."""
        if "DW_AT_declaration" in die.attributes:
            return CtfType(die.offset, Kind.FORWARD, name)
        members = tuple(self._member(c, kind) for c in die.iter_children()
                        if c.tag == "DW_TAG_member")
        return CtfType(die.offset, kind, name, size=self._int(die, "DW_AT_byte_size"),
                       members=members)

    def _member(self, die: Any, kind: int) -> CtfMember:
        """One member: its bit offset from the start of the struct, its bitfield width."""
        bit_size = self._int(die, "DW_AT_bit_size")
        if "DW_AT_data_bit_offset" in die.attributes:
            bits = self._int(die, "DW_AT_data_bit_offset")
        else:
            loc = die.attributes.get("DW_AT_data_member_location")
            bits = 8 * _member_location(loc.value) if loc is not None else 0
            if bit_size and "DW_AT_bit_offset" in die.attributes:
                # DWARF 2/3: counted from the most significant bit of the storage unit
                unit = 8 * self._int(die, "DW_AT_byte_size")
                bits += unit - self._int(die, "DW_AT_bit_offset") - bit_size
        if kind == Kind.UNION and "DW_AT_data_member_location" not in die.attributes:
            bits = 0
        return CtfMember(self._name(die), self._ref(die), bits, bit_size)

    def _array(self, die: Any) -> CtfType:
        """An array; every further dimension is an array of the inner ones."""
        counts = [self._count(c) for c in die.iter_children()
                  if c.tag in ("DW_TAG_subrange_type", "DW_TAG_enumeration_type")]
        ref = self._ref(die)
        for count in reversed(counts[1:]):
            inner = CtfType(self._next_synthetic, Kind.ARRAY, "", ref=ref, nelems=count)
            self._types[inner.id] = inner
            self._next_synthetic += 1
            ref = inner.id
        return CtfType(die.offset, Kind.ARRAY, "", ref=ref, nelems=counts[0] if counts else 0)

    def _count(self, sub: Any) -> int:
        """Elements of one dimension: ``DW_AT_count``, or ``DW_AT_upper_bound`` + 1."""
        if "DW_AT_count" in sub.attributes:
            return self._int(sub, "DW_AT_count")
        if "DW_AT_upper_bound" in sub.attributes:
            upper = sub.attributes["DW_AT_upper_bound"].value
            if isinstance(upper, int):
                lower = self._int(sub, "DW_AT_lower_bound")
                return max(0, upper - lower + 1)
        return 0        # a flexible array member, or a bound only known at run time


class Dwarf(Ctf):
    """A kernel's types from DWARF, behind the same interface as CTF and BTF."""

    @classmethod
    def load_elf(cls, elf: bytes) -> Dwarf:
        """The types of an ELF file's DWARF (DragonFly's ``kernel.debug``)."""
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        try:
            f = ELFFile(io.BytesIO(elf))
        except ELFError as exc:
            raise DwarfError(f"not an ELF file: {exc}") from exc
        if not f.has_dwarf_info() or f.get_section_by_name(".debug_info") is None:
            raise DwarfError("the ELF file has no .debug_info (a stripped kernel? DragonFly "
                             "keeps the types in the build's kernel.debug)")
        return cls(DwarfTable(f.get_dwarf_info()))


class RecordTable:
    """A fixed list of records (a :class:`TypeTable`), e.g. loaded from JSON."""

    layer = 0

    def __init__(self, types: Iterable[CtfType], source: str = "DWARF") -> None:
        self.source = source
        self._types = {t.id: t for t in types}

    def get(self, tid: int) -> CtfType:
        if tid not in self._types:
            raise DwarfError(f"type id {tid:#x} is not in the stored {self.source} subset")
        return self._types[tid]

    def local(self, tid: int) -> bool:
        return True

    def loaded(self) -> list[CtfType]:
        return list(self._types.values())

    def named(self) -> dict[str, list[CtfType]]:
        out: dict[str, list[CtfType]] = {}
        for t in self._types.values():
            if t.name:
                out.setdefault(t.name, []).append(t)
        return out


def _refs(t: CtfType) -> Iterator[int]:
    """The ids a record refers to."""
    if t.ref:
        yield t.ref
    for m in t.members:
        yield m.type_id


def dwarf_subset(types: Ctf, roots: Iterable[str]) -> list[CtfType]:
    """The records of *roots* (``"struct vmspace"``...) and everything they refer to.

    Incomplete structs met on the way are completed by name when a definition
    exists, so the subset answers the same lookups as the whole DWARF.
    """
    todo = [types.find(spec) for spec in roots]
    seen: dict[int, CtfType] = {}
    while todo:
        t = todo.pop()
        if t.id in seen:
            continue
        seen[t.id] = t
        if t.incomplete and t.name:
            prefix = "union" if t.kind == Kind.UNION else "struct"
            try:
                todo.append(types.find(f"{prefix} {t.name}"))
            except CtfError:
                pass
        todo.extend(r for r in (types.type_by_id(i, t.layer) for i in _refs(t)) if r)
    return sorted(seen.values(), key=lambda t: t.id)


def subset_to_json(records: Iterable[CtfType]) -> str:
    """Records as JSON (the cache of a kernel's types beside its image)."""
    rows = [{"id": t.id, "kind": t.kind, "name": t.name, "size": t.size, "ref": t.ref,
             "nelems": t.nelems, "encoding": t.encoding, "bits": t.bits,
             "members": [[m.name, m.type_id, m.bit_offset, m.bitfield_size]
                         for m in t.members],
             "enums": [list(e) for e in t.enumerators]} for t in records]
    return json.dumps({"format": JSON_FORMAT, "types": rows}, separators=(",", ":"))


def types_from_json(text: str, source: str = "DWARF") -> Ctf:
    """The types stored by :func:`subset_to_json`."""
    try:
        doc = json.loads(text)
        if doc.get("format") != JSON_FORMAT:
            raise DwarfError(f"stored types are {doc.get('format')!r}, not {JSON_FORMAT!r}")
        records = [CtfType(r["id"], r["kind"], r["name"], size=r["size"], ref=r["ref"],
                           nelems=r["nelems"], encoding=r["encoding"], bits=r["bits"],
                           members=tuple(CtfMember(*m) for m in r["members"]),
                           enumerators=tuple((n, v) for n, v in r["enums"]))
                   for r in doc["types"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DwarfError(f"unreadable stored types: {exc}") from exc
    return Ctf(RecordTable(records, source))
