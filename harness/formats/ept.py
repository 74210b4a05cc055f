"""Intel extended page tables (EPT), rooted at the PML4 (or PML5) named by the EPTP.

Entry bits (Intel SDM vol. 3C, "EPT paging-structure entries")::

    63 suppress #VE   62..52 ignored (FreeBSD: 52 EMUL_V, 53 EMUL_RW; KVM: 54-58)
    51..12 frame (up to MAXPHYADDR)   11 ignored (KVM: SPTE_MMU_PRESENT_MASK)
    10 user X (MBEC)   9 D   8 A   7 PS   6 IPAT   5..3 memory type   2 X  1 W  0 R

A leaf (a PTE, or a PDPTE/PDE with PS) maps 4 KiB, 1 GiB or 2 MiB; its
``memtype`` is bits 5:3 (IPAT is left in ``raw``: models should ignore it).
Accessed and dirty (bits 8, 9) are reported only when the EPTP enabled them
(``ad_enabled``), else they are None.  R/W/X are ANDed along the path.

Structural findings: frame bits from MAXPHYADDR to 51 and a leaf memory type
of 2, 3 or 7 are ``reserved_bits``; so are bits 6:3 of a non-leaf entry.  PS
in a PML4E/PML5E is ``bad_entry``, and so is W without R (an EPT
misconfiguration), and X alone when ``exec_only`` is False.

Flavours (``EptParams.flavour``):

* ``"hw"``: present = any of R, W, X.
* ``"kvm"``: present = bit 11.  KVM's MMIO SPTEs (W|X without R and without
  bit 11, an intended EPT misconfiguration) and zapped entries that read
  ``0x8000000000000000`` (SHADOW_NONPRESENT_VALUE, suppress #VE) are neither
  mappings nor findings.  A KVM-present leaf with R=W=X=0 is an access-tracked
  SPTE: a mapping with r = w = x = False.  A table page reached from two
  entries is ``shared_table`` (each KVM shadow page maps one GPA range).
* ``"freebsd-emulated-ad"`` (pmap ``PMAP_EMULATE_AD_BITS``): present =
  EPT_PG_EMUL_V (bit 52), r = bit 52, w = EPT_PG_EMUL_RW (bit 53), x = bit 2;
  the hardware R and W bits are the accessed and dirty bits.  An entry with
  hardware R/W/X but without bit 52 is a ``bad_entry`` (the CPU can use a
  translation the pmap considers invalid).

Editing (:mod:`harness.inject`): the frame of a level-*L* leaf is its bits
from ``12 + 9 * (L - 1)`` up; r is taken away by clearing R and W (W without
R is a misconfiguration), w by clearing W (and EMUL_RW), x by clearing X; a
reserved value is memory type 7 (bits 5:3 all set), plus bit 12 in a large
leaf; another memory type is UC (0) for WB, WB for anything else.

>>> EptCodec(EptParams()).decode(0x037, 1)[:3]     # OpenBSD's leaf: RWX, WB
('leaf', 7, 6)
>>> decode_eptp(0x12345000 | 0x1e)
(305418240, 4, 6, False)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.formats.base import Format, StructuralFinding, WalkLimits, WalkResult
from harness.formats.leafedit import LeafEdits
from harness.formats.radix import (
    LEAF,
    PERM_R,
    PERM_W,
    PERM_X,
    TABLE,
    Decoded,
    EntryCodec,
    RadixShape,
    walk_radix,
)
from harness.mem import PhysMem

__all__ = ["EptParams", "EptCodec", "walk", "walk_eptp", "decode_eptp", "EPT",
           "EPT_R", "EPT_W", "EPT_X", "EPT_IPAT", "EPT_PS", "EPT_A", "EPT_D",
           "EPT_PG_EMUL_V", "EPT_PG_EMUL_RW", "VMX_EPTP_AD_ENABLE_BIT"]

EPT_R, EPT_W, EPT_X = 1 << 0, 1 << 1, 1 << 2
EPT_RWX = EPT_R | EPT_W | EPT_X
EPT_MT_MASK, EPT_IPAT, EPT_PS, EPT_A, EPT_D = 0x38, 1 << 6, 1 << 7, 1 << 8, 1 << 9
EPT_PG_EMUL_V, EPT_PG_EMUL_RW = 1 << 52, 1 << 53         # FreeBSD amd64 pmap.h
SPTE_MMU_PRESENT_MASK = 1 << 11                          # KVM arch/x86/kvm/mmu/spte.h
VMX_EPTP_AD_ENABLE_BIT = 1 << 6
RESERVED_MEMTYPES = frozenset({2, 3, 7})
FLAVOURS = ("hw", "kvm", "freebsd-emulated-ad")


@dataclass(frozen=True)
class EptParams:
    """Parameters of an EPT walk."""

    levels: int = 4                     # page-walk length: 4 or 5
    flavour: str = "hw"                 # one of FLAVOURS
    maxphyaddr: int = 52                # frame bits at or above this are reserved
    ad_enabled: bool = False            # EPTP bit 6: A/D bits are kept by the CPU
    exec_only: bool = True              # the CPU allows X without R (VPID_CAP bit 0)
    limits: WalkLimits = WalkLimits()   # read budget and L1 memory size

    def __post_init__(self) -> None:
        if self.levels not in (4, 5):
            raise ValueError(f"EPT levels must be 4 or 5, not {self.levels}")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"EPT flavour must be one of {FLAVOURS}, not {self.flavour!r}")
        if not 32 <= self.maxphyaddr <= 52:
            raise ValueError(f"MAXPHYADDR must be 32..52, not {self.maxphyaddr}")


def decode_eptp(eptp: int) -> tuple[int, int, int, bool]:
    """(root, levels, memtype, ad_enabled) of an EPT pointer."""
    root = eptp & 0x000F_FFFF_FFFF_F000
    return root, ((eptp >> 3) & 7) + 1, eptp & 7, bool(eptp & VMX_EPTP_AD_ENABLE_BIT)


class EptCodec(LeafEdits, EntryCodec):
    """Decodes EPT entries in one of the three flavours."""

    def __init__(self, params: EptParams) -> None:
        self.params = params
        self.frame_mask = ((1 << params.maxphyaddr) - 1) & ~0xFFF
        self.reserved = ((1 << 52) - 1) & ~((1 << params.maxphyaddr) - 1)
        self.present_mask = {"hw": EPT_RWX, "kvm": SPTE_MMU_PRESENT_MASK,
                             "freebsd-emulated-ad": EPT_PG_EMUL_V}[params.flavour]
        self.alarm_mask = EPT_RWX if params.flavour == "freebsd-emulated-ad" else 0
        self.shares_tables = params.flavour != "kvm"   # a KVM shadow page maps one range

    def decode(self, attr: int, level: int) -> Decoded:
        """Table, leaf or finding for an entry's attribute bits at *level*."""
        bad = self.check(attr, level)
        if bad is not None:
            return bad
        perm = self.perm(attr)
        if level > 1 and not attr & EPT_PS:
            return Decoded(TABLE, perm)
        memtype = (attr & EPT_MT_MASK) >> 3
        if memtype in RESERVED_MEMTYPES:
            return Decoded("reserved_bits", detail=f"leaf memory type {memtype}")
        accessed, dirty = self.accessed_dirty(attr)
        return Decoded(LEAF, perm, memtype, accessed, dirty)

    def check(self, attr: int, level: int) -> Decoded | None:
        """The structural finding for an entry, or None when it is well formed."""
        if attr & self.reserved:
            return Decoded("reserved_bits", detail=f"bits {attr & self.reserved:#x} at or "
                           f"above MAXPHYADDR {self.params.maxphyaddr}")
        if attr & EPT_PS and level >= 4:
            return Decoded("bad_entry", detail=f"PS set in a level-{level} entry")
        if attr & EPT_W and not attr & EPT_R:
            return Decoded("bad_entry", detail="W without R (EPT misconfiguration)")
        if attr & EPT_X and not attr & EPT_R and not self.params.exec_only:
            return Decoded("bad_entry", detail="X without R and no execute-only support")
        if level > 1 and not attr & EPT_PS and attr & 0x78:
            return Decoded("reserved_bits", detail=f"bits {attr & 0x78:#x} in a non-leaf entry")
        return None

    def perm(self, attr: int) -> int:
        """R/W/X the entry grants, by flavour."""
        if self.params.flavour == "freebsd-emulated-ad":
            return ((PERM_R if attr & EPT_PG_EMUL_V else 0)
                    | (PERM_W if attr & EPT_PG_EMUL_RW else 0) | (PERM_X if attr & EPT_X else 0))
        return ((PERM_R if attr & EPT_R else 0) | (PERM_W if attr & EPT_W else 0)
                | (PERM_X if attr & EPT_X else 0))

    def accessed_dirty(self, attr: int) -> tuple[bool | None, bool | None]:
        """The leaf's accessed and dirty bits, or None where nothing keeps them."""
        if self.params.flavour == "freebsd-emulated-ad":
            return bool(attr & EPT_R), bool(attr & EPT_W)
        if not self.params.ad_enabled:
            return None, None
        return bool(attr & EPT_A), bool(attr & EPT_D)

    def decode_absent(self, entry: int, level: int) -> Decoded:
        """FreeBSD emulated A/D: hardware-present without EMUL_V is a bad entry."""
        return Decoded("bad_entry", detail="hardware R/W/X set without EPT_PG_EMUL_V")

    # ---- editing (harness.inject) ----

    def without(self, raw: int, level: int, perm: str) -> int:
        """Clear R and W (r), W and EMUL_RW (w) or X (x)."""
        emulated = self.params.flavour == "freebsd-emulated-ad"
        bits = {"r": EPT_R | EPT_W | (EPT_PG_EMUL_V | EPT_PG_EMUL_RW if emulated else 0),
                "w": EPT_W | (EPT_PG_EMUL_RW if emulated else 0), "x": EPT_X}[perm]
        return raw & ~bits

    def with_reserved(self, raw: int, level: int) -> int:
        """Memory type 7 (reserved in a leaf), and bit 12 in a 2 MiB or 1 GiB leaf."""
        return raw | EPT_MT_MASK | (1 << 12 if level > 1 else 0)

    def other_memtype(self, raw: int, level: int) -> int:
        """UC (0) in place of WB (6), WB in place of anything else."""
        memtype = 0 if (raw & EPT_MT_MASK) >> 3 == 6 else 6
        return (raw & ~EPT_MT_MASK) | memtype << 3


def walk(mem: PhysMem, root: int, params: EptParams | None = None) -> WalkResult:
    """Walk the EPT whose PML4 (PML5) is at physical *root*."""
    params = params or EptParams()
    return walk_radix(mem, root & ~0xFFF, EptCodec(params), RadixShape(params.levels),
                      params.limits)


def walk_eptp(mem: PhysMem, eptp: int, params: EptParams | None = None) -> WalkResult:
    """Walk the EPT an EPTP names, taking the walk length and A/D enable from it.

    An EPTP with a walk length other than 4 or 5 gives one ``bad_entry``
    finding (level 0, table 0, raw = the EPTP) and no mappings.
    """
    params = params or EptParams()
    root, levels, _memtype, ad = decode_eptp(eptp)
    if levels not in (4, 5):
        finding = StructuralFinding("bad_entry", 0, 0, 0, 0, eptp,
                                    f"EPTP page-walk length {levels}")
        return WalkResult(findings=[finding])
    return walk(mem, root, replace(params, levels=levels, ad_enabled=ad))


EPT = Format(
    "ept", "Intel extended page tables (EPT), rooted at the EPTP's PML4/PML5", walk, EptParams,
    EptCodec)
