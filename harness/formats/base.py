"""Types shared by every second-level page-table format.

A format module exposes ``walk(mem, root, params) -> WalkResult``: a pure
function over :class:`harness.mem.PhysMem` that yields one :class:`Mapping`
per present leaf and one :class:`StructuralFinding` per entry that cannot be a
valid mapping (reserved bits, frame beyond memory, loops, read budget).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from harness.formats.mapping import Mapping, hexs
from harness.mem import PhysMem

if TYPE_CHECKING:
    from harness.formats.leaves import Leaves

__all__ = ["Mapping", "StructuralFinding", "WalkResult", "Format", "WalkLimits", "LeafEditor",
           "hexs"]


@dataclass(frozen=True)
class StructuralFinding:
    """An entry that the walker refused to treat as a mapping."""

    kind: str             # reserved_bits, frame_beyond_memory, loop, read_budget,
    #                       bad_entry, shared_table
    gpa: int              # first input address the entry covers
    level: int
    table: int            # physical address of the table holding the entry
    index: int
    raw: int
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The slat.json form: addresses as hex strings."""
        return {"kind": self.kind, "gpa": hexs(self.gpa), "level": self.level,
                "table": hexs(self.table), "index": self.index,
                "entry": hexs(self.table + 8 * self.index), "raw": f"{self.raw:#018x}",
                "detail": self.detail}


class WalkResult:
    """What a walk produced: leaves in ascending input-address order, and findings.

    A radix walk hands over its leaves as columns (:attr:`leaves`, a
    :class:`~harness.formats.leaves.Leaves`); :attr:`mappings` builds the
    :class:`Mapping` records from them on first use and keeps them.  A result
    made from a list of mappings (hand-made in a test, or the VPTE walker)
    gives :attr:`leaves` from that list.

    >>> WalkResult([Mapping(0, 0x5000, 4096, True, True, True, 1, 0x5007)]).leaves.hpa.tolist()
    [20480]
    """

    def __init__(self, mappings: list[Mapping] | None = None,
                 findings: list[StructuralFinding] | None = None, tables_read: int = 0,
                 *, leaves: Leaves | None = None) -> None:
        self._mappings = mappings if mappings is not None or leaves is not None else []
        self._leaves = leaves
        self.findings: list[StructuralFinding] = findings if findings is not None else []
        self.tables_read = tables_read

    @property
    def mappings(self) -> list[Mapping]:
        """One Mapping per leaf (built from :attr:`leaves` on first use)."""
        if self._mappings is None:
            assert self._leaves is not None
            self._mappings = self._leaves.mappings()
        return self._mappings

    @mappings.setter
    def mappings(self, value: list[Mapping]) -> None:
        self._mappings, self._leaves = value, None

    @property
    def leaves(self) -> Leaves:
        """The leaves as columns (from the list of mappings when there is one)."""
        if self._leaves is None:
            from harness.formats.leaves import Leaves
            return Leaves.from_mappings(self._mappings or [])
        return self._leaves

    @property
    def leaf_count(self) -> int:
        """Number of leaves, without building Mapping records."""
        return len(self._leaves) if self._leaves is not None else len(self._mappings or [])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WalkResult):
            return NotImplemented
        return (self.mappings, self.findings, self.tables_read) == \
            (other.mappings, other.findings, other.tables_read)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"WalkResult({self.leaf_count} leaves, findings={self.findings!r}, "
                f"tables_read={self.tables_read})")


@dataclass(frozen=True)
class WalkLimits:
    """Bounds that keep a walk over hostile tables finite."""

    max_tables: int = 1 << 16      # table pages read before giving up with "read_budget"
    mem_size: int | None = None    # frames at or beyond this are "frame_beyond_memory"
    max_leaves: int = 1 << 20      # leaves produced before giving up with "read_budget"
    max_findings: int = 1 << 14    # structural findings before giving up with "read_budget"


class LeafEditor(Protocol):
    """How a format changes one field of a leaf at its own level (``harness.inject``).

    The NPT, EPT and stage-2 codecs implement it (their shared part is
    :class:`harness.formats.leafedit.LeafEdits`).
    """

    cleared: int

    def leaf_frame_mask(self, level: int) -> int:
        """The output-address bits of a leaf at *level*."""
        ...

    def with_frame(self, raw: int, level: int, hpa: int) -> int:
        """The leaf pointing at *hpa* (aligned to its size), other bits kept."""
        ...

    def without(self, raw: int, level: int, perm: str) -> int:
        """The leaf without permission *perm* ("r", "w", "x")."""
        ...

    def with_reserved(self, raw: int, level: int) -> int:
        """The leaf with a reserved bit or field value set (ValueError if none)."""
        ...

    def other_memtype(self, raw: int, level: int) -> int:
        """The leaf with another valid memory type."""
        ...


@dataclass(frozen=True)
class Format:
    """A registry record for one page-table format."""

    name: str                                  # "ept", "npt", "stage2", "vpte"
    description: str                           # one line, for `slatcheck formats`
    walk: Callable[[PhysMem, int, Any], WalkResult]  # walk(mem, root, params)
    params: type                               # frozen dataclass of walk parameters
    editor: Callable[[Any], LeafEditor] | None = None  # editor(params); None: not injectable
