"""AMD nested page tables (NPT, "RVI"): the x86-64 long-mode format under nCR3.

Entry bits (AMD APM vol. 2, "Long-mode page translation")::

    63  NX        62..52 AVL      51..12 frame (up to MAXPHYADDR)
    11..9 AVL (KVM: bit 11 = SPTE_MMU_PRESENT_MASK)   8 G   7 PS (PAT in a PTE)
    6 D   5 A   4 PCD   3 PWT   2 US   1 RW   0 P

Guest accesses are user accesses, so a leaf grants r = P and US,
w = r and RW, x = r and not NX, and every entry on the path restricts what
lies below it (the permissions are the AND along the path).  PS is allowed in
a PDPTE (1 GiB leaf) and a PDE (2 MiB leaf); in a PML4E or PML5E it is a
``bad_entry``.  Frame bits from MAXPHYADDR to 51 are ``reserved_bits``, and so
are frame bits below a large leaf's size other than its PAT bit (bit 12).
Accessed = A (bit 5), dirty = D (bit 6) on leaves.  ``memtype`` is the
leaf's PAT index, ``PAT << 2 | PCD << 1 | PWT`` (0..7), with PWT bit 3, PCD
bit 4 and PAT bit 7 in a 4 KiB PTE but bit 12 in a 2 MiB or 1 GiB leaf (AMD
APM vol. 2, "Page-Attribute Table Mechanism"); which index a leaf may carry is
the model's business.

Editing (:mod:`harness.inject`): the frame of a level-*L* leaf is bits 51 (or
MAXPHYADDR - 1) down to ``12 + 9 * (L - 1)``; r is taken away by clearing US,
w by clearing RW, x by setting NX; the reserved bit is bit 13 in a large leaf
(below its size and above PAT) and bit 51 in a 4 KiB one (only when
MAXPHYADDR < 52: with 52 physical-address bits a PTE has none); another memory
type is the leaf's PAT index with PCD flipped.

Flavours (``NptParams.flavour``):

* ``"hw"``: present = P (bit 0);
* ``"kvm"``: present = bit 11 (KVM's ``is_shadow_present_pte``).  An entry
  with P set but not bit 11 is a KVM MMIO SPTE (P plus reserved bits, so the
  access faults to KVM): it is not a mapping and is *not* reported, since KVM
  installs such entries on purpose for emulated MMIO.  An entry with bit 11
  but not P is KVM-present but unusable by the CPU: it is a mapping with
  r = w = x = False.  KVM never points two entries at one table page (each
  shadow page maps one GPA range): a second reference is ``shared_table``.

``top_slots`` restricts the walk to some root indices: OpenBSD's RVI pmap keeps
the host's recursive slot 255, kernel slots 256+ and direct map 507+ in the
root, without US, next to the guest's slot 0.

>>> NptCodec(NptParams()).decode(0xe67, 1).perm   # KVM leaf flags seen live: RWX
7
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from harness.formats.base import Format, WalkLimits, WalkResult
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

__all__ = ["NptParams", "NptCodec", "walk", "NPT", "PG_V", "PG_RW", "PG_U", "PG_PWT", "PG_PCD",
           "PG_A", "PG_M", "PG_PS", "PG_NX", "PG_PAT_PTE", "PG_PAT_LARGE",
           "SPTE_MMU_PRESENT_MASK", "pat_index"]

PG_V, PG_RW, PG_U, PG_PWT, PG_PCD = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
PG_A, PG_M, PG_PS, PG_NX = 1 << 5, 1 << 6, 1 << 7, 1 << 63
PG_PAT_LARGE = 1 << 12                  # PAT bit of a 2 MiB / 1 GiB leaf
PG_PAT_PTE = 1 << 7                     # PAT bit of a 4 KiB PTE (PS in larger leaves)
PG_RSVD_LARGE = 1 << 13                 # reserved in a 2 MiB / 1 GiB leaf (frame bit < size)
SPTE_MMU_PRESENT_MASK = 1 << 11         # KVM arch/x86/kvm/mmu/spte.h
FLAVOURS = ("hw", "kvm")


@dataclass(frozen=True)
class NptParams:
    """Parameters of an NPT walk."""

    levels: int = 4                          # 4 (PML4) or 5 (PML5, LA57 hosts)
    flavour: str = "hw"                      # "hw" (present = P) or "kvm" (present = bit 11)
    maxphyaddr: int = 52                     # frame bits at or above this are reserved
    top_slots: Collection[int] | None = None  # root indices to walk; None = all 512
    limits: WalkLimits = WalkLimits()        # read budget and L1 memory size

    def __post_init__(self) -> None:
        if self.levels not in (4, 5):
            raise ValueError(f"NPT levels must be 4 or 5, not {self.levels}")
        if self.flavour not in FLAVOURS:
            raise ValueError(f"NPT flavour must be one of {FLAVOURS}, not {self.flavour!r}")
        if not 32 <= self.maxphyaddr <= 52:
            raise ValueError(f"MAXPHYADDR must be 32..52, not {self.maxphyaddr}")


class NptCodec(LeafEdits, EntryCodec):
    """Decodes x86-64 long-mode entries as NPT sees them (user accesses)."""

    large_low_ok = PG_PAT_LARGE

    def __init__(self, params: NptParams) -> None:
        self.params = params
        self.present_mask = SPTE_MMU_PRESENT_MASK if params.flavour == "kvm" else PG_V
        self.shares_tables = params.flavour != "kvm"   # a KVM shadow page maps one range
        self.frame_mask = ((1 << params.maxphyaddr) - 1) & ~0xFFF
        self.reserved = ((1 << 52) - 1) & ~((1 << params.maxphyaddr) - 1)

    def decode(self, attr: int, level: int) -> Decoded:
        """Table, leaf or finding for an entry's attribute bits at *level*."""
        if attr & self.reserved:
            return Decoded("reserved_bits", detail=f"bits {attr & self.reserved:#x} "
                           f"at or above MAXPHYADDR {self.params.maxphyaddr}")
        if attr & PG_PS and level >= 4:
            return Decoded("bad_entry", detail=f"PS set in a level-{level} entry")
        perm = _user_perm(attr)
        if level == 1 or attr & PG_PS:
            pat = bool(attr & PG_PAT_PTE) if level == 1 else False   # bit 12: leaf_memtype
            return Decoded(LEAF, perm, pat_index(attr, pat), bool(attr & PG_A),
                           bool(attr & PG_M))
        return Decoded(TABLE, perm)

    def leaf_memtype(self, entry: int, level: int, memtype: int | None) -> int | None:
        """A large leaf's PAT bit is bit 12, inside the frame field of a 4 KiB page."""
        if level > 1 and entry & PG_PAT_LARGE and memtype is not None:
            return memtype | 4
        return memtype

    # ---- editing (harness.inject) ----

    def without(self, raw: int, level: int, perm: str) -> int:
        """Clear US (r: no guest access at all), clear RW (w) or set NX (x)."""
        if perm == "x":
            return raw | PG_NX
        return raw & ~{"r": PG_U, "w": PG_RW}[perm]

    def with_reserved(self, raw: int, level: int) -> int:
        """Bit 13 set in a large leaf; bit 51 in a PTE if MAXPHYADDR < 52."""
        if level > 1:
            return raw | PG_RSVD_LARGE
        if self.params.maxphyaddr < 52:
            return raw | 1 << 51
        raise ValueError("a 4 KiB NPT leaf has no reserved bit with MAXPHYADDR 52")

    def other_memtype(self, raw: int, level: int) -> int:
        """The leaf with PCD flipped: PAT index 0 (WB) becomes 2 (UC-)."""
        return raw ^ PG_PCD


def pat_index(attr: int, pat: bool) -> int:
    """PAT index ``PAT << 2 | PCD << 1 | PWT`` of an entry.

    >>> pat_index(PG_PCD | PG_PWT, True)
    7
    """
    return (4 if pat else 0) | (2 if attr & PG_PCD else 0) | (1 if attr & PG_PWT else 0)


def _user_perm(attr: int) -> int:
    """R/W/X that an entry grants a user (guest) access."""
    if not (attr & PG_V and attr & PG_U):
        return 0
    return PERM_R | (PERM_W if attr & PG_RW else 0) | (0 if attr & PG_NX else PERM_X)


def walk(mem: PhysMem, root: int, params: NptParams | None = None) -> WalkResult:
    """Walk the NPT whose top table is at physical *root* (nCR3 without flag bits)."""
    params = params or NptParams()
    shape = RadixShape(params.levels, top_slots=params.top_slots)
    return walk_radix(mem, root & ~0xFFF, NptCodec(params), shape, params.limits)


NPT = Format(
    "npt", "AMD nested page tables (x86-64 long-mode entries under nCR3)", walk, NptParams,
    NptCodec)
