"""Intel EPT walker: golden entries (OpenBSD, FreeBSD, KVM), EPTP, findings, properties."""

from __future__ import annotations

import pytest
from encoders import ALL_PERMS, EptEncoder, build, observed, spec_lists
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.formats import FORMATS
from harness.formats.ept import EptParams, decode_eptp, walk, walk_eptp
from harness.mem import DictMem

ROOT = 0x10000


def path(mem: DictMem, gpa: int, leaf: int, levels: int = 4, table: int = 0x7,
         leaf_level: int = 1) -> int:
    """Write root -> ... -> leaf for *gpa*; returns the leaf's table address."""
    pa = ROOT
    for level in range(levels, leaf_level, -1):
        child = ROOT + 0x1000 * (levels - level + 1)
        mem.write_u64(pa + 8 * ((gpa >> (12 + 9 * (level - 1))) & 511), child | table)
        pa = child
    mem.write_u64(pa + 8 * ((gpa >> (12 + 9 * (leaf_level - 1))) & 511), leaf)
    return pa


def test_registered() -> None:
    assert FORMATS["ept"].walk is walk and FORMATS["ept"].params is EptParams


@pytest.mark.parametrize("levels", [4, 5])
def test_openbsd_golden(levels: int) -> None:
    """OpenBSD pmap_enter_ept: intermediates 0x7, leaves low bits exactly 0x037."""
    mem = DictMem(size=1 << 30)
    gpa = 0x123000 | (1 << 47 if levels == 5 else 0)
    pt = path(mem, gpa, 0x456000 | 0x037, levels)
    res = walk(mem, ROOT, EptParams(levels=levels))
    assert res.findings == [] and res.tables_read == levels
    [m] = res.mappings
    assert (m.gpa, m.hpa, m.size, m.level, m.table) == (gpa, 0x456000, 4096, 1, pt)
    assert (m.r, m.w, m.x, m.memtype, m.accessed, m.dirty) == (True, True, True, 6, None, None)


def test_freebsd_emulated_ad_golden() -> None:
    """R(0)|X(2)|0x70|EMUL_V(52) after a read fault; W(1)|EMUL_RW(53) after a write."""
    mem = DictMem(size=1 << 30)
    params = EptParams(flavour="freebsd-emulated-ad")
    table = 0x7 | 1 << 52 | 1 << 53
    pt = path(mem, 0x5000, 0x99000 | 0x1 | 0x4 | 0x70 | 1 << 52, table=table)
    [m] = walk(mem, ROOT, params).mappings
    assert (m.r, m.w, m.x, m.accessed, m.dirty, m.memtype) == (True, False, True, True, False, 6)
    mem.write_u64(pt + 8 * 5, 0x99000 | 0x7 | 0x70 | 1 << 52 | 1 << 53)
    [m] = walk(mem, ROOT, params).mappings
    assert (m.r, m.w, m.x, m.accessed, m.dirty) == (True, True, True, True, True)
    # Valid but not yet accessed: hardware R/W/X clear except X, still a mapping.
    mem.write_u64(pt + 8 * 5, 0x99000 | 0x70 | 1 << 52)
    [m] = walk(mem, ROOT, params).mappings
    assert (m.r, m.w, m.x, m.accessed, m.dirty) == (True, False, False, False, False)


def test_freebsd_hardware_present_without_emul_v_is_bad() -> None:
    mem = DictMem(size=1 << 30)
    path(mem, 0x5000, 0x99000 | 0x37, table=0x7 | 1 << 52 | 1 << 53)
    res = walk(mem, ROOT, EptParams(flavour="freebsd-emulated-ad"))
    assert res.mappings == []
    assert [(f.kind, f.gpa, f.level) for f in res.findings] == [("bad_entry", 0x5000, 1)]


def test_kvm_flavour() -> None:
    mem = DictMem(size=1 << 30)
    table = 0x7 | 1 << 11 | 1 << 8
    pt = path(mem, 0x1000, 0x88000 | 0x37 | 1 << 11 | 0x300, table=table)
    mem.write_u64(pt + 8 * 2, 1 << 63)                # zapped: SHADOW_NONPRESENT_VALUE
    mem.write_u64(pt + 8 * 3, 0x6 | 0x1230 << 3)      # MMIO SPTE: W|X, no R, no bit 11
    mem.write_u64(pt + 8 * 4, 0x77000 | 0x30 | 1 << 11 | 5 << 54)   # access-tracked
    res = walk(mem, ROOT, EptParams(flavour="kvm", ad_enabled=True))
    assert res.findings == []
    assert observed(res.mappings) == [
        (0x1000, 0x88000, 4096, True, True, True, 1, 6, True, True),
        (0x4000, 0x77000, 4096, False, False, False, 1, 6, False, False)]
    hw = walk(mem, ROOT, EptParams(flavour="hw"))
    assert [f.kind for f in hw.findings] == ["bad_entry"]    # the MMIO SPTE, as hardware sees it


def test_decode_eptp() -> None:
    assert decode_eptp(0xABC000 | 0x1E) == (0xABC000, 4, 6, False)
    assert decode_eptp(0xABC000 | 0x20 | 0x40 | 6) == (0xABC000, 5, 6, True)
    assert decode_eptp(0xABC000 | 0x18) == (0xABC000, 4, 0, False)


def test_walk_eptp_takes_levels_and_ad_from_the_eptp() -> None:
    mem = DictMem(size=1 << 30)
    path(mem, 1 << 48, 0x99000 | 0x37 | 0x100, levels=5)
    [m] = walk_eptp(mem, ROOT | 0x20 | 0x40 | 6).mappings
    assert (m.gpa, m.accessed, m.dirty) == (1 << 48, True, False)
    # The same tables read with a 4-level EPTP: every level shifts by one.
    [four] = walk_eptp(mem, ROOT | 0x18 | 6).mappings
    assert (four.gpa, four.hpa, four.accessed) == (1 << 39, ROOT + 0x4000, None)
    bad = walk_eptp(mem, ROOT | 0x38)
    assert bad.mappings == [] and [f.kind for f in bad.findings] == ["bad_entry"]


@pytest.mark.parametrize("leaf,kind", [
    (0x99000 | 0x7 | 2 << 3, "reserved_bits"),          # memory type 2
    (0x99000 | 0x7 | 3 << 3, "reserved_bits"),
    (0x99000 | 0x7 | 7 << 3, "reserved_bits"),
    (0x99000 | 0x2 | 6 << 3, "bad_entry"),              # W without R
    (0x99000 | 0x6 | 6 << 3, "bad_entry"),
    (0x99000 | 0x37 | 1 << 50, "reserved_bits"),        # above MAXPHYADDR 46
])
def test_leaf_findings(leaf: int, kind: str) -> None:
    mem = DictMem(size=1 << 30)
    path(mem, 0x7000, leaf)
    res = walk(mem, ROOT, EptParams(maxphyaddr=46))
    assert res.mappings == []
    assert [(f.kind, f.gpa, f.raw) for f in res.findings] == [(kind, 0x7000, leaf)]


def test_exec_only() -> None:
    mem = DictMem(size=1 << 30)
    path(mem, 0x7000, 0x99000 | 0x4 | 0x30)
    [m] = walk(mem, ROOT).mappings
    assert (m.r, m.w, m.x) == (False, False, True)
    res = walk(mem, ROOT, EptParams(exec_only=False))
    assert res.mappings == [] and [f.kind for f in res.findings] == ["bad_entry"]


@pytest.mark.parametrize("levels", [4, 5])
def test_ps_in_top_level_and_cache_bits_in_tables(levels: int) -> None:
    mem = DictMem(size=1 << 30)
    mem.write_u64(ROOT, 0x20000 | 0x87)
    mem.write_u64(ROOT + 8, 0x30000 | 0x37)                  # memtype bits in a table
    res = walk(mem, ROOT, EptParams(levels=levels))
    assert res.mappings == [] and res.tables_read == 1
    assert [(f.kind, f.index) for f in res.findings] == [("bad_entry", 0), ("reserved_bits", 1)]


def test_permissions_are_anded_along_the_path() -> None:
    mem = DictMem(size=1 << 30)
    path(mem, 0x7000, 0x99000 | 0x37, table=0x5)           # tables R-X
    [m] = walk(mem, ROOT).mappings
    assert (m.r, m.w, m.x) == (True, False, True)


PERMS_HW = [p for p in ALL_PERMS if p != (False, False, False) and not (p[1] and not p[0])]
PERMS_KVM = [p for p in ALL_PERMS if not (p[1] and not p[0])]
PERMS_FREEBSD = [p for p in ALL_PERMS if p[0]]
MEMTYPES = [0, 1, 4, 5, 6]


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("flavour,perms,ad", [
    ("hw", PERMS_HW, False), ("hw", PERMS_HW, True), ("kvm", PERMS_KVM, True),
    ("freebsd-emulated-ad", PERMS_FREEBSD, False)])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_walk_reads_back_what_the_encoder_wrote(levels: int, flavour: str,
                                                perms: list[tuple[bool, bool, bool]],
                                                ad: bool, data: st.DataObject) -> None:
    specs = data.draw(spec_lists(9 * levels + 12, perms, MEMTYPES,
                                 dirty_needs_accessed=flavour != "hw"))
    enc = EptEncoder(flavour, ad)
    mem = DictMem(size=1 << 32)
    build(mem, enc, ROOT, levels, specs)
    res = walk(mem, ROOT, EptParams(levels=levels, flavour=flavour, ad_enabled=ad))
    assert res.findings == []
    assert observed(res.mappings) == [enc.expect(s) for s in specs]
