"""AMD NPT walker: golden entries, permissions along the path, flavours, findings."""

from __future__ import annotations

import pytest
from encoders import ALL_PERMS, NptEncoder, Spec, build, observed, spec_lists
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import MemoryReadError
from harness.formats import FORMATS, WalkLimits
from harness.formats.npt import NptParams, walk
from harness.mem import DictMem

KVM_LEAF = 0xE67          # P RW US A D + bits 9-11, seen on a live L1 KVM/SVM
KVM_TABLE = 0xE07         # intermediate: P RW US + bits 9-11
HW_TABLE = 0x007


def chain(mem: DictMem, root: int, levels: int, gpa: int, leaf: int,
          table_flags: int = HW_TABLE, leaf_level: int = 1) -> list[int]:
    """Write one path root -> ... -> leaf by hand; tables at root + 0x1000 * k."""
    table, tables = root, [root]
    for level in range(levels, leaf_level, -1):
        child = root + 0x1000 * (levels - level + 1)
        idx = (gpa >> (12 + 9 * (level - 1))) & 511
        mem.write_u64(table + 8 * idx, child | table_flags)
        table = child
        tables.append(child)
    idx = (gpa >> (12 + 9 * (leaf_level - 1))) & 511
    mem.write_u64(table + 8 * idx, leaf)
    return tables


@pytest.mark.parametrize("levels", [4, 5])
def test_kvm_golden_leaf(levels: int) -> None:
    mem = DictMem(size=1 << 30)
    gpa = 0x80000 + (3 << 39) + (5 << 30)
    chain(mem, 0x10000, levels, gpa, 0x234000 | KVM_LEAF, KVM_TABLE)
    res = walk(mem, 0x10000, NptParams(levels=levels, flavour="kvm"))
    assert res.findings == []
    assert res.tables_read == levels
    [m] = res.mappings
    assert (m.gpa, m.hpa, m.size, m.level) == (gpa, 0x234000, 4096, 1)
    assert (m.r, m.w, m.x, m.accessed, m.dirty) == (True, True, True, True, True)
    assert m.raw == 0x234000 | KVM_LEAF
    assert m.table == 0x10000 + 0x1000 * (levels - 1)
    assert m.index == (gpa >> 12) & 511


def test_registered() -> None:
    fmt = FORMATS["npt"]
    assert fmt.walk is walk and fmt.params is NptParams


def test_kvm_mmio_spte_is_not_a_mapping() -> None:
    mem = DictMem(size=1 << 30)
    chain(mem, 0x10000, 4, 0x1000, 0x234000 | KVM_LEAF, KVM_TABLE)
    mmio = (1 << 51) | 0x7 | (0x5 << 3)       # P + reserved bit 51, no bit 11
    mem.write_u64(0x13000 + 8 * 2, mmio)
    kvm = walk(mem, 0x10000, NptParams(flavour="kvm"))
    assert [m.gpa for m in kvm.mappings] == [0x1000]
    assert kvm.findings == []
    hw = walk(mem, 0x10000, NptParams(flavour="hw", maxphyaddr=48))
    assert [f.kind for f in hw.findings] == ["reserved_bits"]
    assert hw.findings[0].gpa == 0x2000


def test_kvm_present_without_p_is_unusable_mapping() -> None:
    mem = DictMem(size=1 << 30)
    chain(mem, 0x10000, 4, 0x1000, 0x234000 | (KVM_LEAF & ~1), KVM_TABLE)
    [m] = walk(mem, 0x10000, NptParams(flavour="kvm")).mappings
    assert (m.r, m.w, m.x) == (False, False, False)
    assert walk(mem, 0x10000, NptParams(flavour="hw")).mappings == []


@pytest.mark.parametrize("table_flags,leaf_flags,rwx", [
    (0x7, 0x7, (True, True, True)),
    (0x7, 0x5, (True, False, True)),            # leaf read-only
    (0x5, 0x7, (True, False, True)),            # table read-only restricts the leaf
    (0x3, 0x7, (False, False, False)),          # table without US: nothing for the guest
    (0x7, 0x3, (False, False, False)),          # leaf without US
    (0x7 | 1 << 63, 0x7, (True, True, False)),  # NX on a table
    (0x7, 0x7 | 1 << 63, (True, True, False)),  # NX on the leaf
])
def test_permissions_are_anded_along_the_path(table_flags: int, leaf_flags: int,
                                              rwx: tuple[bool, bool, bool]) -> None:
    mem = DictMem(size=1 << 30)
    chain(mem, 0x10000, 4, 0x5000, 0x99000 | leaf_flags, table_flags)
    [m] = walk(mem, 0x10000).mappings
    assert (m.r, m.w, m.x) == rwx


@pytest.mark.parametrize("leaf_level,size", [(2, 1 << 21), (3, 1 << 30)])
def test_large_leaves(leaf_level: int, size: int) -> None:
    mem = DictMem(size=1 << 32)
    gpa, hpa = 7 * size, 2 * size
    chain(mem, 0x10000, 4, gpa, hpa | 0x87 | 0x60, leaf_level=leaf_level)
    res = walk(mem, 0x10000)
    [m] = res.mappings
    assert (m.gpa, m.hpa, m.size, m.level) == (gpa, hpa, size, leaf_level)
    # The PAT bit (12) of a large leaf is an attribute, not part of the frame.
    mem.write_u64(m.table + 8 * m.index, hpa | 0x87 | 1 << 12)
    [m2] = walk(mem, 0x10000).mappings
    assert m2.hpa == hpa
    # Any other frame bit below the leaf size is reserved.
    mem.write_u64(m.table + 8 * m.index, hpa | 0x87 | 1 << 13)
    res = walk(mem, 0x10000)
    assert res.mappings == []
    assert [(f.kind, f.gpa, f.level) for f in res.findings] == [("reserved_bits", gpa,
                                                                 leaf_level)]


@pytest.mark.parametrize("levels", [4, 5])
def test_ps_in_top_levels_is_bad_entry(levels: int) -> None:
    mem = DictMem(size=1 << 30)
    mem.write_u64(0x10000 + 8 * 1, 0x20000 | 0x87)
    res = walk(mem, 0x10000, NptParams(levels=levels))
    assert res.mappings == []
    assert [(f.kind, f.level, f.index) for f in res.findings] == [("bad_entry", levels, 1)]


def test_top_slots_skip_host_kernel_slots() -> None:
    """OpenBSD RVI: recursive slot 255 and kernel slots 256+ stay in the root."""
    mem = DictMem(size=1 << 30)
    chain(mem, 0x10000, 4, 0x3000, 0x77000 | 0x67)
    mem.write_u64(0x10000 + 8 * 255, 0x10000 | 0x3)         # recursive, no US
    mem.write_u64(0x10000 + 8 * 256, 0x50000 | 0x3)
    mem.write_u64(0x50000, (1 << 30) | 0x83)                 # a kernel 1 GiB page
    full = walk(mem, 0x10000)
    assert [f.kind for f in full.findings] == ["loop"]
    assert [m.gpa for m in full.mappings] == [0x3000, 256 << 39]
    assert not full.mappings[1].r
    only = walk(mem, 0x10000, NptParams(top_slots=range(0, 1)))
    assert only.findings == []
    assert [m.gpa for m in only.mappings] == [0x3000]


def test_maxphyaddr_reserved_bits_in_a_table_stop_the_walk() -> None:
    mem = DictMem(size=1 << 30)
    tables = chain(mem, 0x10000, 4, 0x3000, 0x77000 | 0x67)
    mem.write_u64(tables[1], tables[2] | 0x7 | 1 << 45)
    res = walk(mem, 0x10000, NptParams(maxphyaddr=40))
    assert res.mappings == []
    assert [(f.kind, f.level) for f in res.findings] == [("reserved_bits", 3)]
    # With MAXPHYADDR 52 the same bit is a frame bit: without mem_size the read fails
    # and the failure propagates instead of becoming an empty table.
    with pytest.raises(MemoryReadError):
        walk(mem, 0x10000, NptParams(maxphyaddr=52))


def test_frames_beyond_memory() -> None:
    mem = DictMem(size=1 << 30)
    tables = chain(mem, 0x10000, 4, 0x3000, 0x77000 | 0x67)
    mem.write_u64(tables[3] + 8 * 4, (1 << 30) | 0x67)       # leaf just past the end
    mem.write_u64(tables[2] + 8 * 9, (5 << 30) | 0x7)        # table far past the end
    res = walk(mem, 0x10000, NptParams(limits=WalkLimits(mem_size=1 << 30)))
    assert [m.gpa for m in res.mappings] == [0x3000]
    assert sorted((f.kind, f.level, f.gpa) for f in res.findings) == [
        ("frame_beyond_memory", 1, 0x4000), ("frame_beyond_memory", 2, 9 << 21)]


@pytest.mark.parametrize("bad", [dict(levels=3), dict(flavour="ept"), dict(maxphyaddr=60)])
def test_bad_params(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NptParams(**bad)  # type: ignore[arg-type]


PERMS_NPT = [p for p in ALL_PERMS if p[0]] + [(False, False, False)]


@pytest.mark.parametrize("levels", [4, 5])
@pytest.mark.parametrize("flavour", ["hw", "kvm"])
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_walk_reads_back_what_the_encoder_wrote(levels: int, flavour: str,
                                                data: st.DataObject) -> None:
    specs = data.draw(spec_lists(9 * levels + 12, PERMS_NPT, [None, *range(8)]))
    enc = NptEncoder(kvm=flavour == "kvm")
    mem = DictMem(size=1 << 32)
    end = build(mem, enc, 0x10000, levels, specs)
    res = walk(mem, 0x10000, NptParams(levels=levels, flavour=flavour,
                                       limits=WalkLimits(mem_size=1 << 40)))
    assert res.findings == []
    assert observed(res.mappings) == [enc.expect(s) for s in specs]
    assert res.tables_read == (end - 0x10000) // 0x1000


@pytest.mark.parametrize("flip,fields", [
    (1 << 1, [4]),          # RW: w (the victim is read-only)
    (1 << 63, [5]),         # NX: x
    (1 << 20, [1]),         # a frame bit: hpa
    (1 << 2, [3, 5]),       # US: r and x (w was already off)
    (1 << 5, [8]),          # A: accessed
])
def test_a_corrupted_leaf_is_seen(flip: int, fields: list[int]) -> None:
    """Flip one bit of one encoded leaf: exactly that mapping reads back differently."""
    specs = [Spec(i << 12, (0x400 + i) << 12, 4096, True, i % 2 == 0, True, None, True, False)
             for i in range(0, 64, 3)]
    enc = NptEncoder()
    mem = DictMem(size=1 << 32)
    build(mem, enc, 0x10000, 4, specs)
    victim = walk(mem, 0x10000).mappings[5]
    mem.write_u64(victim.table + 8 * victim.index, victim.raw ^ flip)
    got = observed(walk(mem, 0x10000).mappings)
    want = [enc.expect(s) for s in specs]
    diffs = [(g, w) for g, w in zip(got, want, strict=True) if g != w]
    assert len(diffs) == 1 and diffs[0][0][0] == victim.gpa
    assert [k for k in range(10) if diffs[0][0][k] != diffs[0][1][k]] == fields
