"""One present leaf of a second-level table, and how addresses are written in artifacts.

Kept apart from :mod:`harness.formats.base` so that the leaf columns
(:mod:`harness.formats.leaves`) and the walk result both build on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Mapping", "hexs"]


def hexs(value: int | None) -> str | None:
    """An address as written in slat.json and findings.json: a hex string (None stays).

    >>> hexs(4096), hexs(None)
    ('0x1000', None)
    """
    return None if value is None else f"{value:#x}"


class Mapping(NamedTuple):
    """One present leaf: [gpa, gpa+size) -> [hpa, hpa+size).

    A NamedTuple rather than a frozen dataclass: a walk builds one per leaf,
    and a million of them must cost well under a second.

    >>> Mapping(gpa=0x1000, hpa=0x5000, size=4096, r=True, w=True, x=True,
    ...         level=1, raw=0x5037).end
    8192
    """

    gpa: int              # input address (GPA, IPA, or vkernel VA)
    hpa: int              # output address (L1 physical, or memory-image offset for VPTE)
    size: int             # 4 KiB, 2 MiB, 1 GiB, ...
    r: bool               # guest may read
    w: bool               # guest may write
    x: bool               # guest may execute
    level: int            # 1 = last level (4 KiB), 2 = PD/2 MiB, 3 = PDPT/1 GiB ...
    raw: int              # the leaf entry as read
    memtype: int | None = None   # EPT memory type, stage-2 MemAttr; None if the format has none
    accessed: bool | None = None  # A / AF bit where the format has one
    dirty: bool | None = None     # D bit where the format has one
    table: int = 0        # physical address of the table page holding the leaf
    index: int = 0  # type: ignore[assignment]  # the leaf's index in that table (shadows tuple.index)

    @property
    def end(self) -> int:
        """First input address past the mapping."""
        return self.gpa + self.size

    @property
    def entry(self) -> int:
        """Physical address of the leaf entry itself."""
        return self.table + 8 * self.index

    def to_json(self) -> dict[str, Any]:
        """The slat.json form of the mapping: addresses and sizes as hex strings.

        >>> Mapping(0x1000, 0x5000, 4096, True, True, True, 1, 0x5037, 6,
        ...         table=0x9000, index=1).to_json()["entry"]
        '0x9008'
        """
        return {"gpa": hexs(self.gpa), "hpa": hexs(self.hpa), "size": hexs(self.size),
                "r": self.r, "w": self.w, "x": self.x, "level": self.level,
                "raw": f"{self.raw:#018x}", "memtype": self.memtype,
                "accessed": self.accessed, "dirty": self.dirty,
                "table": hexs(self.table), "index": self.index, "entry": hexs(self.entry)}
