"""Editing one leaf at its own level: the part every radix codec's leaf editor shares.

Deliberate corruption (:mod:`harness.inject`) changes one field of a leaf
through the format's codec, which mixes :class:`LeafEdits` in beside
:class:`~harness.formats.radix.EntryCodec`: every edit works on the fields of
the leaf's *own* level, so that moving the frame of a 2 MiB NPT leaf changes
bit 21, never its PAT bit 12.  The codecs implement the format-specific edits
(:meth:`LeafEdits.without`, :meth:`LeafEdits.with_reserved`,
:meth:`LeafEdits.other_memtype`); together they satisfy
:class:`~harness.formats.base.LeafEditor`.

>>> class Demo(LeafEdits):
...     frame_mask = 0x000F_FFFF_FFFF_F000
>>> hex(Demo().with_frame(0x40000e7, 2, 0x4200000))     # a 2 MiB leaf moved by one frame
'0x42000e7'
"""

from __future__ import annotations

from harness.formats.radix import level_shift

__all__ = ["LeafEdits"]


class LeafEdits:
    """The frame edit and the non-present value; the codec supplies ``frame_mask``."""

    frame_mask: int             # output address of a table or 4 KiB page (the codec's)
    cleared: int = 0            # the non-present value a "clear" writes

    def leaf_frame_mask(self, level: int) -> int:
        """The output-address bits of a leaf at *level* (bits below its size excluded).

        >>> class Demo(LeafEdits):
        ...     frame_mask = 0x000F_FFFF_FFFF_F000
        >>> hex(Demo().leaf_frame_mask(2))
        '0xfffffffe00000'
        """
        return self.frame_mask & ~((1 << level_shift(level)) - 1)

    def with_frame(self, raw: int, level: int, hpa: int) -> int:
        """Leaf *raw* at *level* pointing at *hpa* instead, every other bit kept.

        *hpa* must be aligned to the leaf's size and fit the frame field (ValueError).
        """
        mask = self.leaf_frame_mask(level)
        if hpa & ~mask:
            raise ValueError(f"frame {hpa:#x} is not a level-{level} leaf frame "
                             f"(aligned to {1 << level_shift(level):#x}, within {mask:#x})")
        return (raw & ~mask) | hpa

    def without(self, raw: int, level: int, perm: str) -> int:
        """Leaf *raw* without permission *perm* ("r", "w" or "x")."""
        raise NotImplementedError

    def with_reserved(self, raw: int, level: int) -> int:
        """Leaf *raw* with a reserved bit (or field value) set; ValueError if none exists."""
        raise NotImplementedError

    def other_memtype(self, raw: int, level: int) -> int:
        """Leaf *raw* with another valid memory type than the one it has."""
        raise NotImplementedError
