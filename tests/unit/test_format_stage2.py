"""arm64 stage-2 walker: VTCR decoding, concatenated roots, descriptors, XN, properties."""

from __future__ import annotations

import pytest
from encoders import ALL_PERMS, Stage2Encoder, build, observed, spec_lists
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.formats import FORMATS, WalkLimits
from harness.formats.stage2 import Stage2Params, from_vtcr, root_entries, walk, walk_vttbr
from harness.mem import DictMem

ROOT = 0x20000
PAGE = 0x3 | 0xF << 2 | 3 << 6 | 3 << 8 | 1 << 10      # valid page, normal, RW, ISH, AF


def test_registered() -> None:
    assert FORMATS["stage2"].walk is walk and FORMATS["stage2"].params is Stage2Params


@pytest.mark.parametrize("vtcr,ia,start,entries", [
    (24 | 1 << 6, 40, 1, 1024),        # KVM default: 40-bit IPA, 2 concatenated pages
    (25 | 1 << 6, 39, 1, 512),
    (21 | 1 << 6 | 0x3500, 43, 1, 8192),   # 16 pages, the most; other fields ignored
    (16 | 2 << 6, 48, 0, 512),
    (30 | 0 << 6, 34, 2, 8192),
    (32 | 0 << 6, 32, 2, 2048),
])
def test_from_vtcr(vtcr: int, ia: int, start: int, entries: int) -> None:
    p = from_vtcr(vtcr)
    assert (p.ia_bits, p.start_level, root_entries(p)) == (ia, start, entries)


@pytest.mark.parametrize("vtcr", [
    20 | 1 << 6,          # 44-bit IPA at arm level 1: 32 root pages
    28 | 0 << 6,          # 36-bit IPA at arm level 2: 64 root pages
    24 | 3 << 6,          # SL0 = 3
])
def test_from_vtcr_rejects_impossible_roots(vtcr: int) -> None:
    with pytest.raises(ValueError):
        from_vtcr(vtcr)


def test_from_vtcr_rejects_other_granules() -> None:
    with pytest.raises(ValueError):
        from_vtcr(24 | 1 << 6 | 2 << 14)           # TG0 = 16 KiB


def test_concatenated_root_second_page_is_walked() -> None:
    """40-bit IPA at arm level 1: IPAs >= 512 GiB live in the root's second page."""
    mem = DictMem(size=1 << 30)
    params = from_vtcr(24 | 1 << 6)
    high = 600 << 30                                           # 600 GiB: entry 600
    mem.write_u64(ROOT + 0x1000 + 8 * (600 - 512), 0x40000 | 0x3)
    mem.write_u64(0x40000, 0x41000 | 0x3)
    mem.write_u64(0x41000 + 8 * 7, 0x77000 | PAGE)
    res = walk(mem, ROOT, params)
    assert res.findings == [] and res.tables_read == 4
    [m] = res.mappings
    assert (m.gpa, m.hpa, m.size, m.level) == (high + 0x7000, 0x77000, 4096, 1)
    assert (m.r, m.w, m.x, m.memtype, m.accessed, m.dirty) == (True, True, True, 0xF, True, None)
    assert (m.table, m.index) == (0x41000, 7)
    # The entry that leads there sits in the second root page.
    mem.write_u64(0x40000, 0x40000 | 0x3)
    [loop] = walk(mem, ROOT, params).findings
    assert (loop.kind, loop.table, loop.level) == ("loop", 0x40000, 2)


def test_walk_vttbr_drops_vmid_and_cnp() -> None:
    mem = DictMem(size=1 << 30)
    mem.write_u64(ROOT, 0x40000 | 0x3)
    mem.write_u64(0x40000 + 8 * 3, (3 << 21) | 0x1 | 0xF << 2 | 1 << 6)   # 2 MiB block, RO
    [m] = walk_vttbr(mem, ROOT | 5 << 48 | 1, Stage2Params(ia_bits=39)).mappings
    assert (m.gpa, m.hpa, m.size, m.level, m.r, m.w) == (3 << 21, 3 << 21, 1 << 21, 2, True, False)


@pytest.mark.parametrize("xn_encoding,xn,x", [
    ("new", 0, True), ("new", 1, False), ("new", 2, False), ("new", 3, False),
    ("old", 0, True), ("old", 2, False), ("old", 1, True),     # old: bit 53 is not XN
])
def test_xn(xn_encoding: str, xn: int, x: bool) -> None:
    mem = DictMem(size=1 << 30)
    mem.write_u64(ROOT, 0x40000 | 0x3)
    mem.write_u64(0x40000, 0x41000 | 0x3)
    mem.write_u64(0x41000, 0x77000 | PAGE | xn << 53)
    [m] = walk(mem, ROOT, Stage2Params(ia_bits=39, xn_encoding=xn_encoding)).mappings
    assert m.x is x


@pytest.mark.parametrize("start,level,entry,kind", [
    (0, 4, 0x1 | 0x40, "bad_entry"),                   # block at arm level 0
    (2, 1, 0x77000 | 0x1 | 0x40, "bad_entry"),         # "block" at arm level 3
    (1, 3, (1 << 30) | 1 << 21 | 0x1 | 0x40, "reserved_bits"),   # unaligned 1 GiB block
    (1, 3, 0x40000 | 1 << 48 | 0x3, "reserved_bits"),  # OA bit 48 without LPA2
])
def test_descriptor_findings(start: int, level: int, entry: int, kind: str) -> None:
    mem = DictMem(size=1 << 32)
    params = Stage2Params(ia_bits={0: 48, 1: 39, 2: 30}[start], start_level=start)
    table = ROOT
    if start == 2:                                     # reach arm level 3 through one table
        mem.write_u64(ROOT, 0x40000 | 0x3)
        table = 0x40000
    mem.write_u64(table, entry)
    res = walk(mem, ROOT, params)
    assert res.mappings == []
    assert [(f.kind, f.level, f.table) for f in res.findings] == [(kind, level, table)]


def test_invalid_entries_with_owner_id_are_not_mappings() -> None:
    mem = DictMem(size=1 << 30)
    mem.write_u64(ROOT, 0x40000 | 0x3)
    mem.write_u64(0x40000, 0x41000 | 0x3)
    for i in range(8):
        mem.write_u64(0x41000 + 8 * i, (i + 1) << 2 | 1 << 10 | 0x2)   # owner id, locked
    res = walk(mem, ROOT, Stage2Params(ia_bits=39))
    assert res.mappings == [] and res.findings == []


def test_permissions_are_not_inherited() -> None:
    mem = DictMem(size=1 << 30)
    mem.write_u64(ROOT, 0x40000 | 0x3 | 0xFFF << 52)         # upper table bits ignored
    mem.write_u64(0x40000, 0x41000 | 0x3)
    mem.write_u64(0x41000, 0x77000 | 0x3 | 1 << 7)           # write-only page, no AF
    [m] = walk(mem, ROOT, Stage2Params(ia_bits=39)).mappings
    assert (m.r, m.w, m.x, m.accessed, m.memtype) == (False, True, True, False, 0)


@pytest.mark.parametrize("vtcr", [24 | 1 << 6, 25 | 1 << 6, 16 | 2 << 6, 30 | 0 << 6])
@pytest.mark.parametrize("xn_encoding", ["new", "old"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_walk_reads_back_what_the_encoder_wrote(vtcr: int, xn_encoding: str,
                                                data: st.DataObject) -> None:
    params = from_vtcr(vtcr, xn_encoding, WalkLimits(mem_size=1 << 40))
    specs = data.draw(spec_lists(params.ia_bits, ALL_PERMS, list(range(16)),
                                 gib_leaves=params.start_level < 2))
    enc = Stage2Encoder(xn_encoding)
    mem = DictMem(size=1 << 32)
    top = 4 - params.start_level
    end = build(mem, enc, ROOT, top, specs, root_pages=max(1, root_entries(params) // 512))
    res = walk(mem, ROOT, params)
    assert res.findings == []
    assert observed(res.mappings) == [enc.expect(s) for s in specs]
    assert res.tables_read == (end - ROOT) // 0x1000


def test_34_bit_ipa_at_level_2() -> None:
    """SL0 = 0 with a 34-bit IPA: the arm level-2 root is 16 concatenated pages."""
    params = from_vtcr(30)
    mem = DictMem(size=1 << 30)
    mem.write_u64(ROOT + 0x1000 * 7 + 8 * 5, 0x50000 | 0x3)      # entry 7 * 512 + 5
    mem.write_u64(0x50000 + 8 * 9, 0x66000 | PAGE)
    res = walk(mem, ROOT, params)
    assert res.tables_read == 17
    [m] = res.mappings
    assert (m.gpa, m.level) == (((7 * 512 + 5) << 21) + (9 << 12), 1)
