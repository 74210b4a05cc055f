"""Deliberate corruption of one nested leaf, so users and tests can prove the checker bites.

Pure: :func:`corrupt` turns a leaf (a :class:`~harness.formats.base.Mapping`)
into the corrupted raw value through the format's own leaf editor
(``FORMATS[name].editor(params)``, :class:`~harness.formats.base.LeafEditor`),
so every change lands in the field of the leaf's *own* level: moving the frame
of a 2 MiB NPT leaf changes bit 21, not its PAT bit 12.  The check step writes
the value through GDB and puts the original back after the next check.

Kinds and the finding each must produce (:data:`EXPECTED_FINDING`):

* ``frame``: the leaf points at another frame: by default the neighbouring one
  of its own size (inside the L1's memory when its size is known), or a target
  (:class:`Target`): the frame backing another GPA of the same VM, or an
  explicit HPA; both must be aligned to the leaf's size;
* ``permission``: r, w or x taken away;
* ``clear``: the entry becomes non-present;
* ``reserved_bit``: a bit (or field value) reserved at the leaf's level;
* ``memtype``: another valid memory type than the one the leaf has.

>>> from harness.formats.npt import NptCodec, NptParams
>>> from harness.formats.base import Mapping
>>> huge = Mapping(0x40000000, 0x3e00000, 1 << 21, True, True, True, 2, 0x3e00ee7)
>>> hex(corrupt(NptCodec(NptParams()), "frame", huge))        # bit 21, not PAT bit 12
'0x3c00ee7'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.formats.base import LeafEditor, Mapping

__all__ = ["INJECT_KINDS", "EXPECTED_FINDING", "Target", "corrupt", "neighbour_frame",
           "target_frame"]

INJECT_KINDS = ("frame", "permission", "clear", "reserved_bit", "memtype")

# the finding kind each injection must produce
EXPECTED_FINDING = {"frame": "wrong_frame", "permission": "permission",
                    "clear": "missing", "reserved_bit": "reserved_bits",
                    "memtype": "memtype"}


@dataclass(frozen=True)
class Target:
    """Where a ``frame`` injection points the leaf: another GPA's frame, or an HPA."""

    gpa: int | None = None    # the frame that backs this GPA of the same VM
    hpa: int | None = None    # an explicit L1 physical address

    def __post_init__(self) -> None:
        if (self.gpa is None) == (self.hpa is None):
            raise ValueError("a target names exactly one of gpa and hpa")


def neighbour_frame(m: Mapping, mem_size: int | None = None) -> int:
    """The frame of *m*'s size next to its own: the lowest frame bit flipped.

    When that would reach past *mem_size*, the one below is taken instead.

    >>> leaf = Mapping(0x0, 0x3fc00000, 1 << 21, True, True, True, 2, 0)
    >>> hex(neighbour_frame(leaf)), hex(neighbour_frame(leaf, mem_size=0x3fe00000))
    ('0x3fe00000', '0x3fa00000')
    """
    flipped = m.hpa ^ m.size
    if mem_size is not None and flipped + m.size > mem_size:
        return m.hpa - m.size
    return flipped


def target_frame(m: Mapping, target: Target, backing: Callable[[int], int | None]) -> int:
    """The frame a ``frame`` injection of leaf *m* points at, from *target*.

    *backing* gives the L1 physical address backing a GPA of the same VM (its
    nested leaf or its pagemap entry), or None.  The frame must be aligned to
    *m*'s size: a 2 MiB leaf can only be moved onto another 2 MiB frame.

    >>> leaf = Mapping(0x2000, 0x7000, 4096, True, True, True, 1, 0)
    >>> hex(target_frame(leaf, Target(gpa=0x81000), {0x81000: 0x9000}.get))
    '0x9000'
    """
    if target.gpa is not None:
        hpa = backing(target.gpa)
        if hpa is None:
            raise ValueError(f"no frame backs gpa {target.gpa:#x} in this VM")
        what = f"the frame {hpa:#x} backing gpa {target.gpa:#x}"
    else:
        assert target.hpa is not None
        hpa, what = target.hpa, f"hpa {target.hpa:#x}"
    if hpa % m.size:
        raise ValueError(f"{what} is not aligned to the leaf's size {m.size:#x}")
    if hpa == m.hpa:
        raise ValueError(f"{what} is the leaf's own frame: nothing would change")
    return hpa


def corrupt(editor: LeafEditor, kind: str, m: Mapping, permission: str = "w",
            frame: int | None = None, mem_size: int | None = None) -> int:
    """The corrupted raw value of leaf *m* for injection *kind*.

    *frame* is the new frame of a ``frame`` injection (default
    :func:`neighbour_frame`).  A change the format cannot express at the
    leaf's level raises ValueError.

    >>> from harness.formats.npt import NptCodec, NptParams
    >>> pte = Mapping(0x1000, 0x1234000, 4096, True, True, True, 1, 0x1234e67)
    >>> hex(corrupt(NptCodec(NptParams()), "permission", pte))
    '0x1234e65'
    """
    if kind == "frame":
        new = neighbour_frame(m, mem_size) if frame is None else frame
        return editor.with_frame(m.raw, m.level, new)
    if kind == "permission":
        if permission not in ("r", "w", "x"):
            raise ValueError(f"permission must be r, w or x, not {permission!r}")
        return editor.without(m.raw, m.level, permission)
    if kind == "clear":
        return editor.cleared
    if kind == "reserved_bit":
        return editor.with_reserved(m.raw, m.level)
    if kind == "memtype":
        return editor.other_memtype(m.raw, m.level)
    raise ValueError(f"unknown injection {kind!r}; valid: {', '.join(INJECT_KINDS)}")
