"""Leaves in columns: a walk's present leaves as numpy arrays, one row per leaf.

A walk of a million 4 KiB leaves spends most of its time building a Python
object per leaf; :class:`Leaves` holds the same fields as
:class:`~harness.formats.base.Mapping` in arrays instead, so that the walker
appends a whole table page of leaves with a few array operations and
:func:`harness.diff.diff` compares them with the model's pages in bulk.
:meth:`Leaves.mappings` builds the ``Mapping`` records when someone wants them
(per-leaf model rules, ``slat.json``).

``flags`` packs the booleans: bit 0 r, 1 w, 2 x, 3 accessed, 4 dirty, 5 accessed
is known (not None), 6 dirty is known; ``memtype`` is -1 for None.

>>> from harness.formats.mapping import Mapping
>>> m = Mapping(0x1000, 0x5000, 4096, True, False, True, 1, 0x5005, None, True, None, 0x9000, 1)
>>> lv = Leaves.from_mappings([m]); int(lv.gpa[0]), int(lv.flags[0])
(4096, 45)
>>> lv.mappings() == [m]
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from harness.formats.mapping import Mapping

__all__ = ["Leaves", "F_R", "F_W", "F_X", "F_A", "F_D", "F_A_KNOWN", "F_D_KNOWN", "U64",
           "pack_flags"]

U64 = npt.NDArray[np.uint64]
F_R, F_W, F_X, F_A, F_D, F_A_KNOWN, F_D_KNOWN = 1, 2, 4, 8, 16, 32, 64

_new = tuple.__new__


def pack_flags(r: bool, w: bool, x: bool, accessed: bool | None, dirty: bool | None) -> int:
    """The ``flags`` byte of one leaf.

    >>> pack_flags(True, True, False, None, False)
    67
    """
    return (F_R * r | F_W * w | F_X * x | (0 if accessed is None else F_A_KNOWN | F_A * accessed)
            | (0 if dirty is None else F_D_KNOWN | F_D * dirty))


def _unpack(flags: int) -> tuple[bool, bool, bool, bool | None, bool | None]:
    return (bool(flags & F_R), bool(flags & F_W), bool(flags & F_X),
            bool(flags & F_A) if flags & F_A_KNOWN else None,
            bool(flags & F_D) if flags & F_D_KNOWN else None)


_FLAGS = tuple(_unpack(f) for f in range(128))


@dataclass(frozen=True)
class Leaves:
    """Present leaves in ascending input-address order (one row per leaf)."""

    gpa: U64
    hpa: U64
    size: U64
    raw: U64
    table: U64                                  # page holding the entry
    index: npt.NDArray[np.uint16]               # entry index in that page
    level: npt.NDArray[np.uint8]
    flags: npt.NDArray[np.uint8]                # see the module docstring
    memtype: npt.NDArray[np.int16]              # -1 = None

    def __len__(self) -> int:
        return int(self.gpa.shape[0])

    @property
    def end(self) -> U64:
        """First input address past each leaf."""
        return self.gpa + self.size

    @staticmethod
    def empty() -> Leaves:
        """No leaves."""
        return Leaves.concat([])

    @staticmethod
    def concat(parts: Sequence[Leaves]) -> Leaves:
        """The rows of *parts*, in order."""
        if len(parts) == 1:
            return parts[0]
        cols = ("gpa", "hpa", "size", "raw", "table", "index", "level", "flags", "memtype")
        types = (np.uint64,) * 5 + (np.uint16, np.uint8, np.uint8, np.int16)
        return Leaves(*(np.concatenate([getattr(p, c) for p in parts]).astype(t, copy=False)
                        if parts else np.zeros(0, t) for c, t in zip(cols, types, strict=True)))

    @staticmethod
    def from_mappings(mappings: Iterable[Mapping]) -> Leaves:
        """The columns of a list of Mapping records (a model test's hand-made walk)."""
        rows = list(mappings)
        if not rows:
            return Leaves.concat([])
        gpa, hpa, size, r, w, x, level, raw, memtype, acc, dirty, table, index = zip(
            *rows, strict=True)
        return Leaves(
            np.array(gpa, np.uint64), np.array(hpa, np.uint64), np.array(size, np.uint64),
            np.array(raw, np.uint64), np.array(table, np.uint64), np.array(index, np.uint16),
            np.array(level, np.uint8),
            np.array([pack_flags(*f) for f in zip(r, w, x, acc, dirty, strict=True)], np.uint8),
            np.array([-1 if t is None else t for t in memtype], np.int16))

    def ascending(self) -> Leaves:
        """The rows sorted by input address (stable; itself when already sorted)."""
        gpa = self.gpa
        if gpa.size < 2 or bool((gpa[1:] > gpa[:-1]).all()):
            return self
        order = np.argsort(gpa, kind="stable")
        return Leaves(*(getattr(self, c)[order] for c in Leaves.__dataclass_fields__))

    def rows(self, lo: int, hi: int) -> Leaves:
        """Rows [lo, hi) (views, no copy)."""
        return Leaves(*(getattr(self, c)[lo:hi] for c in Leaves.__dataclass_fields__))

    def mapping(self, i: int) -> Mapping:
        """Row *i* as a Mapping."""
        r, w, x, a, d = _FLAGS[int(self.flags[i])]
        mt = int(self.memtype[i])
        return Mapping(int(self.gpa[i]), int(self.hpa[i]), int(self.size[i]), r, w, x,
                       int(self.level[i]), int(self.raw[i]), None if mt < 0 else mt, a, d,
                       int(self.table[i]), int(self.index[i]))

    def mappings(self) -> list[Mapping]:
        """Every row as a Mapping (one Python object per leaf: slow for millions)."""
        flags = [_FLAGS[f] for f in self.flags.tolist()]
        mts = [None if t < 0 else t for t in self.memtype.tolist()]
        return [_new(Mapping, (g, h, s, f[0], f[1], f[2], lv, raw, mt, f[3], f[4], t, i))
                for g, h, s, f, lv, raw, mt, t, i in zip(
                    self.gpa.tolist(), self.hpa.tolist(), self.size.tolist(), flags,
                    self.level.tolist(), self.raw.tolist(), mts, self.table.tolist(),
                    self.index.tolist(), strict=True)]
