"""arm64 stage-2 translation tables (VMSAv8-64, 4 KiB granule), rooted at VTTBR_EL2.

Descriptor bits (Arm ARM D8; Linux ``arch/arm64/include/asm/kvm_pgtable.h``)::

    58..55 software   54..53 XN (FEAT_XNX; older kernels: bit 54 only)   52 contiguous
    51 DBM   49..48 RES0 (no LPA2)   47..12 output address   10 AF   9..8 SH
    7 S2AP write   6 S2AP read   5..2 MemAttr   1 type   0 valid

Bit 1 is "table" at arm levels 0-2 and "page" at arm level 3; 0 means
"block" at arm levels 1 (1 GiB) and 2 (2 MiB).  A block at arm level 0 or a
type-0 entry at arm level 3 is ``bad_entry``; OA bits 49:48 or OA bits below
a block's size are ``reserved_bits``.  Stage-2 tables carry no hierarchical
permissions.  Invalid entries (bit 0 clear) are never mappings, whatever
their other bits say (pKVM keeps an owner id in bits 9:2).

``Mapping.level`` uses the x86 numbering of :mod:`harness.formats.base`:
``level = 4 - arm_level`` (arm 3 -> 1 = 4 KiB page, arm 2 -> 2 = 2 MiB block,
arm 1 -> 3 = 1 GiB block, arm 0 -> 4).  r = S2AP[0] (bit 6), w = S2AP[1]
(bit 7), ``memtype`` = MemAttr (bits 5:2), accessed = AF (bit 10), dirty is
None (DBM is not interpreted).

Execute permission, ``Stage2Params.xn_encoding``:

* ``"old"``: XN is bit 54; x = not XN.
* ``"new"`` (FEAT_XNX, bits 54:53): 0 = executable at EL1 and EL0, 1 = PXN
  (EL0 only), 2 = XN, 3 = UXN (EL1 only).  Mapping has one x for the whole
  guest, so x is True only for 0; 1 and 3 (executable at one exception
  level only) give x = False, and the raw entry shows which.

The start level and input size come from VTCR_EL2 (:func:`from_vtcr`).  When
the IPA size needs more entries at the start level than one page holds, the
root is up to 16 concatenated pages (e.g. a 40-bit IPA starting at arm level
1 is 1024 entries, 8 KiB); every page is read.

Editing (:mod:`harness.inject`): the output address of a leaf is bits 47 down
to its size (bit 21 for a 2 MiB block); r and w are taken away by clearing
S2AP[0] and S2AP[1], x by setting XN (bit 54, or 54:53 = 2); the reserved bit
is OA bit 48 in a page and OA bit 12 in a block; another memory type is
Device-nGnRE (MemAttr 1) for Normal memory and Normal WB (0xF) for Device.

>>> p = from_vtcr(24 | 1 << 6); (p.ia_bits, p.start_level, root_entries(p))
(40, 1, 1024)
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.formats.base import Format, WalkLimits, WalkResult
from harness.formats.leafedit import LeafEdits
from harness.formats.radix import (
    LEAF,
    PERM_R,
    PERM_RWX,
    PERM_W,
    PERM_X,
    TABLE,
    Decoded,
    EntryCodec,
    RadixShape,
    level_shift,
    walk_radix,
)
from harness.mem import PhysMem

__all__ = ["Stage2Params", "Stage2Codec", "from_vtcr", "root_entries", "walk", "walk_vttbr",
           "STAGE2", "KVM_PTE_VALID", "KVM_PTE_TYPE", "S2AP_R", "S2AP_W", "AF"]

KVM_PTE_VALID, KVM_PTE_TYPE = 1 << 0, 1 << 1
MEMATTR_SHIFT, MEMATTR_MASK = 2, 0xF << 2
S2AP_R, S2AP_W, AF = 1 << 6, 1 << 7, 1 << 10
XN_OLD = 1 << 54
XN_NEW_SHIFT, XN_NEW_MASK = 53, 3 << 53
OA_MASK = 0x0000_FFFF_FFFF_F000            # bits 47:12
OA_RES0 = 3 << 48                          # bits 49:48 without LPA2
VTTBR_BADDR = 0x0000_FFFF_FFFF_FFFE        # bits 47:1
XN_ENCODINGS = ("old", "new")
SL0_TO_START_LEVEL = {0: 2, 1: 1, 2: 0}    # 4 KiB granule
MAX_CONCATENATED = 16


@dataclass(frozen=True)
class Stage2Params:
    """Parameters of a stage-2 walk (4 KiB granule)."""

    ia_bits: int = 40                   # IPA size: 64 - VTCR_EL2.T0SZ
    start_level: int = 1                # arm level of the root: 0, 1 or 2
    xn_encoding: str = "new"            # "new" (bits 54:53, FEAT_XNX) or "old" (bit 54)
    limits: WalkLimits = WalkLimits()   # read budget and L1 memory size

    def __post_init__(self) -> None:
        if self.start_level not in (0, 1, 2):
            raise ValueError(f"stage-2 start level must be 0, 1 or 2, not {self.start_level}")
        if self.xn_encoding not in XN_ENCODINGS:
            raise ValueError(f"xn_encoding must be one of {XN_ENCODINGS}")
        top_shift = level_shift(4 - self.start_level)
        if not top_shift < self.ia_bits <= top_shift + 9 + 4 or self.ia_bits > 48:
            raise ValueError(f"a {self.ia_bits}-bit IPA cannot start at level "
                             f"{self.start_level} (at most {MAX_CONCATENATED} root pages)")


def from_vtcr(vtcr: int, xn_encoding: str = "new",
              limits: WalkLimits | None = None) -> Stage2Params:
    """Stage2Params from VTCR_EL2: T0SZ (bits 5:0), SL0 (bits 7:6), TG0 (bits 15:14)."""
    t0sz, sl0, tg0 = vtcr & 0x3F, (vtcr >> 6) & 3, (vtcr >> 14) & 3
    if tg0 != 0:
        raise ValueError(f"VTCR_EL2.TG0 = {tg0}: only the 4 KiB granule is supported")
    if sl0 not in SL0_TO_START_LEVEL:
        raise ValueError(f"VTCR_EL2.SL0 = {sl0} is not supported with a 4 KiB granule")
    return Stage2Params(64 - t0sz, SL0_TO_START_LEVEL[sl0], xn_encoding,
                        limits or WalkLimits())


def root_entries(params: Stage2Params) -> int:
    """Entries in the (possibly concatenated) root table."""
    return 1 << (params.ia_bits - level_shift(4 - params.start_level))


class Stage2Codec(LeafEdits, EntryCodec):
    """Decodes stage-2 descriptors; levels are x86-numbered (4 - arm level)."""

    present_mask = KVM_PTE_VALID
    frame_mask = OA_MASK

    def __init__(self, params: Stage2Params) -> None:
        self.params = params

    def decode(self, attr: int, level: int) -> Decoded:
        """Table, leaf or finding for a valid descriptor's attribute bits."""
        arm = 4 - level
        if attr & OA_RES0:
            return Decoded("reserved_bits", detail=f"output-address bits {attr & OA_RES0:#x}")
        if attr & KVM_PTE_TYPE:
            return self.leaf(attr) if arm == 3 else Decoded(TABLE, PERM_RWX)
        if arm in (0, 3):
            return Decoded("bad_entry", detail=f"block descriptor at arm level {arm}")
        return self.leaf(attr)

    def leaf(self, attr: int) -> Decoded:
        """A page or block descriptor's permissions and attributes."""
        perm = ((PERM_R if attr & S2AP_R else 0) | (PERM_W if attr & S2AP_W else 0)
                | (PERM_X if self.executable(attr) else 0))
        return Decoded(LEAF, perm, (attr & MEMATTR_MASK) >> MEMATTR_SHIFT,
                       bool(attr & AF), None)

    def executable(self, attr: int) -> bool:
        """Whether the guest may execute at every exception level."""
        if self.params.xn_encoding == "old":
            return not attr & XN_OLD
        return (attr & XN_NEW_MASK) == 0

    # ---- editing (harness.inject) ----

    def without(self, raw: int, level: int, perm: str) -> int:
        """Clear S2AP read (r) or write (w); set XN (x)."""
        if perm == "x":
            if self.params.xn_encoding == "old":
                return raw | XN_OLD
            return (raw & ~XN_NEW_MASK) | 2 << XN_NEW_SHIFT
        return raw & ~{"r": S2AP_R, "w": S2AP_W}[perm]

    def with_reserved(self, raw: int, level: int) -> int:
        """OA bit 48 (RES0 without LPA2) in a page; OA bit 12 (below the size) in a block."""
        return raw | (1 << 12 if level > 1 else 1 << 48)

    def other_memtype(self, raw: int, level: int) -> int:
        """Device-nGnRE (1) for Normal memory, Normal WB (0xF) for Device memory."""
        attr = (raw & MEMATTR_MASK) >> MEMATTR_SHIFT
        new = 0xF if attr & 0xC == 0 else 1
        return (raw & ~MEMATTR_MASK) | new << MEMATTR_SHIFT


def walk(mem: PhysMem, root: int, params: Stage2Params | None = None) -> WalkResult:
    """Walk the stage-2 tables whose (concatenated) root is at physical *root*."""
    params = params or Stage2Params()
    shape = RadixShape(4 - params.start_level, root_entries(params))
    return walk_radix(mem, root & OA_MASK, Stage2Codec(params), shape, params.limits)


def walk_vttbr(mem: PhysMem, vttbr: int, params: Stage2Params | None = None) -> WalkResult:
    """Walk from a VTTBR_EL2 value: BADDR (bits 47:1), dropping VMID and CnP."""
    return walk(mem, vttbr & VTTBR_BADDR, params)


STAGE2 = Format(
    "stage2", "arm64 stage-2 translation tables, 4 KiB granule (VTTBR_EL2)", walk, Stage2Params,
    Stage2Codec)
