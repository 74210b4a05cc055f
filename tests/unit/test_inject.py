"""Each injection changes the leaves KVM really writes, and the walker then reports the
finding the negative scenarios expect (leaves as read on live L1s)."""

from __future__ import annotations

import pytest

from harness.formats.ept import EptParams
from harness.formats.ept import walk as walk_ept
from harness.formats.npt import NptParams
from harness.formats.npt import walk as walk_npt
from harness.inject import EXPECTED_FINDING, INJECT_KINDS, corrupt
from harness.mem import DictMem

# format -> (a KVM leaf for a written page, as read live, a walk of a 4-level tree over it)
LIVE_LEAF = {
    "ept": 0x0600_0000_0E3B_1B77,   # Bochs, kvm_intel 6.1: RWX, WB, IPAT, A, D, bits 11 57 58
    "npt": 0x0000_0000_0E3B_1E67,   # QEMU TCG, kvm_amd 6.1: P RW US A D, bit 11
}
TABLE = {"ept": 0x907, "npt": 0x867}          # KVM's non-leaf entries
FRAME = 0x0E3B_1000


def walk_one(fmt: str, leaf: int) -> tuple[list[tuple[int, int]], list[str]]:
    """Walk a tree mapping GPA 0x81000 with *leaf*; (gpa, hpa) pairs and finding kinds."""
    mem = DictMem(size=1 << 29)
    for table, child in ((0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)):
        mem.write_u64(table, child | TABLE[fmt])
    mem.write_u64(0x4000 + 8 * 0x81, leaf)
    if fmt == "ept":
        res = walk_ept(mem, 0x1000, EptParams(flavour="kvm", maxphyaddr=40, ad_enabled=True))
    else:
        res = walk_npt(mem, 0x1000, NptParams(flavour="kvm", maxphyaddr=40))
    return [(m.gpa, m.hpa) for m in res.mappings], [f.kind for f in res.findings]


@pytest.mark.parametrize("fmt", sorted(LIVE_LEAF))
def test_the_live_leaf_walks_clean(fmt: str) -> None:
    assert walk_one(fmt, LIVE_LEAF[fmt]) == ([(0x81000, FRAME)], [])


@pytest.mark.parametrize("fmt", sorted(LIVE_LEAF))
@pytest.mark.parametrize("kind", INJECT_KINDS)
def test_each_injection_changes_a_live_leaf(fmt: str, kind: str) -> None:
    raw = LIVE_LEAF[fmt]
    bad = corrupt(fmt, kind, raw)
    assert bad != raw
    mappings, findings = walk_one(fmt, bad)
    if kind == "reserved_bit":
        assert EXPECTED_FINDING[kind] in findings and mappings == []
    elif kind == "frame":
        assert mappings == [(0x81000, FRAME ^ 0x1000)]
    elif kind == "clear":
        assert mappings == [] and findings == []
    else:
        assert mappings == [(0x81000, FRAME)]


def test_ept_reserved_memtype_whatever_the_leaf_had() -> None:
    for memtype in range(8):
        leaf = (LIVE_LEAF["ept"] & ~0x38) | memtype << 3
        assert (corrupt("ept", "reserved_bit", leaf) >> 3) & 7 == 7
