"""Deliberate corruption of one nested leaf, so users and tests can prove the checker bites.

Pure: :func:`corrupt` turns a raw leaf into the corrupted value; the runner
writes it through GDB and puts the original back after the next check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.registry import Registry

__all__ = ["InjectBits", "INJECT_BITS", "corrupt", "INJECT_KINDS", "EXPECTED_FINDING"]

INJECT_KINDS = ("frame", "permission", "clear", "reserved_bit")

# the finding kind each injection must produce
EXPECTED_FINDING = {"frame": "wrong_frame", "permission": "permission",
                    "clear": "missing", "reserved_bit": "reserved_bits"}


@dataclass(frozen=True)
class InjectBits:
    """Where a format keeps what an injection changes."""

    drop_clear: dict[str, int]          # bits cleared to take away r / w / x
    drop_set: dict[str, int] = field(default_factory=dict)  # bits set to take it away (NX, XN)
    frame_bit: int = 1 << 12            # flipped to move the frame to a neighbouring page
    cleared: int = 0                    # the non-present value written by "clear"
    reserved: int = 1 << 51             # a bit that is reserved in a leaf (see format docs)


INJECT_BITS: Registry[InjectBits] = Registry("injectable format")
# AMD NPT (x86-64 long mode): US gates every guest access; bit 51 is reserved below
# MAXPHYADDR 52 (QEMU's TCG CPUs have 40 physical address bits).
INJECT_BITS.add("npt", InjectBits(drop_clear={"r": 1 << 2, "w": 1 << 1},
                                  drop_set={"x": 1 << 63}))
# Intel EPT: R/W/X are bits 0..2; memory type 7 (bits 5:3 all set) is reserved in a leaf,
# whatever type the leaf had (ORing type 2 into KVM's WB leaves, type 6, left them WB:
# seen on a live VMX L1 under Bochs).
INJECT_BITS.add("ept", InjectBits(drop_clear={"r": 0b011, "w": 1 << 1, "x": 1 << 2},
                                  reserved=7 << 3))
# arm64 stage-2: S2AP read bit 6, write bit 7; XN bit 54; OA bits 51:48 are RES0 with a
# 48-bit output size.
INJECT_BITS.add("stage2", InjectBits(drop_clear={"r": 1 << 6, "w": 1 << 7},
                                     drop_set={"x": 1 << 54}, reserved=1 << 50))


def corrupt(fmt: str, kind: str, raw: int, permission: str = "w") -> int:
    """The corrupted value of leaf *raw* for injection *kind*.

    >>> hex(corrupt("npt", "permission", 0x1234e67))
    '0x1234e65'
    """
    bits = INJECT_BITS[fmt]
    if kind == "frame":
        return raw ^ bits.frame_bit
    if kind == "permission":
        return (raw & ~bits.drop_clear.get(permission, 0)) | bits.drop_set.get(permission, 0)
    if kind == "clear":
        return bits.cleared
    if kind == "reserved_bit":
        return raw | bits.reserved
    raise ValueError(f"unknown injection {kind!r}; valid: {', '.join(INJECT_KINDS)}")
