"""dragonfly-vkernel model: host PTEs of a VPAGETABLE region against the VPTEs in the image."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.diff import diff
from harness.errors import RegistryLookupError, ScenarioError
from harness.formats import FORMATS
from harness.formats.base import Mapping, WalkResult
from harness.formats.npt import NptParams
from harness.formats.vpte import ObjectImage
from harness.mem import DictMem
from harness.models import MODELS, Access, DictBacking, MemRange, VMDesc

BASE = 0x80000000                 # host VA of the MAP_VPAGETABLE entry
SIZE = 4 << 20
HOST_RW, HOST_NX = 0x2, 1 << 63   # x86-64 host PTE bits, only used to fill Mapping.raw

# VPTE bits (x86 layout) typed in from sys/sys/vkernel.h, not taken from the module.
V, RW, A, M, PS, NX = 0x1, 0x2, 0x20, 0x40, 0x80, 1 << 63

# The four 4 KiB leaves of the L1 table at image offset 0x4000 (VA index 0..3):
LEAVES = {
    0: 0x10000 | V | RW | A | M,          # dirty: the host may map it writable
    1: 0x11000 | V | RW | A,              # clean: the host maps it read-only until VPTE_M
    2: 0x12000 | V | A | NX,              # read-only, no execute
    3: 0x13000 | V | RW | A | M | NX,     # writable, no execute
}
# Image page -> L1 physical page holding it (deliberately not contiguous).
HOST_PAGE = {0x10000: 0x5550000, 0x11000: 0x5551000, 0x12000: 0x5552000, 0x13000: 0x5999000,
             0x14000: 0x5554000}


def image() -> DictMem:
    """Master PDE 0x1003 -> tables at 0x1000, 0x2000, 0x3000, 0x4000 (all V|RW)."""
    mem = DictMem(size=16 << 20)
    mem.write_u64(0x1000, 0x2003)
    mem.write_u64(0x2000, 0x3003)
    mem.write_u64(0x3000, 0x4003)
    for i, vpte in LEAVES.items():
        mem.write_u64(0x4000 + 8 * i, vpte)
    return mem


def vm(mem: DictMem, **kw: object) -> VMDesc:
    """The region as the model's input."""
    opts = {"image": mem, "master_pde": 0x1003, **kw.pop("options", {})}  # type: ignore[dict-item]
    return VMDesc(name="vk0", ranges=(MemRange(BASE, SIZE, name="vpagetable"),),
                  backing=DictBacking(dict(HOST_PAGE)), options=opts, **kw)  # type: ignore[arg-type]


def host(i: int, hpa: int, w: bool, x: bool, size: int = 0x1000) -> Mapping:
    """A host PTE for region page *i*, as the x86-64 walker reports it."""
    raw = hpa | 0x25 | (HOST_RW if w else 0) | (0 if x else HOST_NX)
    return Mapping(gpa=BASE + i * 0x1000, hpa=hpa, size=size, r=True, w=w, x=x, level=1,
                   raw=raw)


def good_host() -> list[Mapping]:
    """What a correct host kernel may have mapped after faults on all four pages."""
    return [host(0, 0x5550000, True, True), host(1, 0x5551000, False, True),
            host(2, 0x5552000, False, False), host(3, 0x5999000, True, False)]


def findings(desc: VMDesc, mappings: list[Mapping]) -> list[tuple[str, int | None]]:
    """(kind, gpa) of every finding of the model over *mappings*."""
    exp = MODELS["dragonfly-vkernel"].expect(desc)
    return [(f.kind, f.gpa) for f in diff(WalkResult(mappings=mappings), exp)]


def test_consistent_host_pmap_has_no_findings() -> None:
    assert findings(vm(image()), good_host()) == []
    assert findings(vm(image()), []) == []


def test_stale_host_pte_after_vpte_cleared_without_madv_inval() -> None:
    mem = image()
    mem.write_u64(0x4000, 0)                          # vkernel unmapped page 0, no MADV_INVAL
    assert findings(vm(mem), good_host()) == [("stale", BASE)]
    mem = image()
    mem.write_u64(0x3000, 0)                          # ... or dropped the whole page table
    assert sorted(findings(vm(mem), good_host())) == [
        ("stale", BASE + i * 0x1000) for i in range(4)]


def test_host_pte_after_vpte_remap_without_madv_inval_is_wrong_frame() -> None:
    mem = image()
    mem.write_u64(0x4000, 0x14000 | V | RW | A | M)   # page 0 now image page 0x14000
    exp = MODELS["dragonfly-vkernel"].expect(vm(mem))
    out = diff(WalkResult(mappings=good_host()), exp)
    assert [(f.kind, f.gpa, f.expected, f.observed) for f in out] == [
        ("wrong_frame", BASE, 0x5554000, 0x5550000)]


def test_wrong_frame() -> None:
    bad = good_host()
    bad[3] = host(3, 0x5553000, True, False)
    assert findings(vm(image()), bad) == [("wrong_frame", BASE + 0x3000)]


def test_writable_host_pte_for_a_clean_vpte() -> None:
    bad = good_host()
    bad[1] = host(1, 0x5551000, True, True)
    exp = MODELS["dragonfly-vkernel"].expect(vm(image()))
    out = diff(WalkResult(mappings=bad), exp)
    assert [(f.kind, f.gpa, f.expected, f.observed) for f in out] == [
        ("permission", BASE + 0x1000, "?-?", "rwx")]


def test_vkernel_clearing_m_without_madv_inval_is_reported() -> None:
    mem = image()
    mem.write_u64(0x4000, LEAVES[0] & ~M)
    assert findings(vm(mem), good_host()) == [("permission", BASE)]


def test_writable_under_a_read_only_intermediate_vpte() -> None:
    mem = image()
    mem.write_u64(0x3000, 0x4001)                     # PD-level VPTE without VPTE_RW
    assert findings(vm(mem), good_host()) == [("permission", BASE), ("permission", BASE + 0x3000)]


def test_executable_host_pte_under_nx() -> None:
    bad = good_host()
    bad[2] = host(2, 0x5552000, False, True)
    assert findings(vm(image()), bad) == [("permission", BASE + 0x2000)]
    # With no NX bit configured, the same host PTE is allowed.
    assert findings(vm(image(), options={"nx_bit": None}), bad) == []


def test_map_entry_protection_caps_the_host_ptes() -> None:
    desc = vm(image())
    desc.ranges = (MemRange(BASE, SIZE, prot="rw"),)
    assert findings(desc, good_host()) == [("permission", BASE), ("permission", BASE + 0x1000)]


def test_outside_the_region_removed_and_torn_down() -> None:
    outside = Mapping(gpa=BASE + SIZE, hpa=0x5550000, size=0x1000, r=True, w=False, x=False,
                      level=1, raw=0x5550025)
    assert findings(vm(image()), good_host() + [outside]) == [("unexpected", BASE + SIZE)]
    assert findings(vm(image(), removed=(BASE,)), good_host()[:1]) == [("leftover", BASE)]
    assert findings(vm(image(), torn_down=True), good_host()[1:2]) == [
        ("leftover", BASE + 0x1000)]


def test_touched_pages_are_required() -> None:
    touched = (Access(BASE + 0x10, "w"), Access(BASE + 0x2000, "r"),
               Access(BASE + 0x5000, "r"))            # page 5 has no VPTE: nothing required
    exp = MODELS["dragonfly-vkernel"].expect(vm(image(), touched=touched))
    assert [(p.gpa, p.hpa, p.w) for p in exp.required] == [
        (BASE, 0x5550000, True), (BASE + 0x2000, 0x5552000, None)]
    got = diff(WalkResult(mappings=good_host()[1:]), exp)
    assert [(f.kind, f.gpa) for f in got] == [("missing", BASE)]


def test_large_vpte_and_large_host_leaf() -> None:
    mem = image()
    mem.write_u64(0x3000 + 8, 0x200000 | V | RW | A | M | PS)   # VA 2 MiB..4 MiB -> image 2 MiB
    backing = {0x200000 + k * 0x1000: 0x40000000 + k * 0x1000 for k in range(512)}
    desc = replace(vm(mem), backing=DictBacking({**HOST_PAGE, **backing}))
    big = Mapping(gpa=BASE + 0x200000, hpa=0x40000000, size=0x200000, r=True, w=True,
                  x=True, level=2, raw=0x400000E7)
    assert findings(desc, good_host() + [big]) == []
    desc.backing.pages[0x200000 + 7 * 0x1000] = 0x7000000     # one page elsewhere on the host
    assert findings(desc, [big]) == [("wrong_frame", BASE + 0x207000)]


def test_old_layout() -> None:
    mem = DictMem(size=1 << 20)
    mem.write_u64(0x1000, 0x201D)                     # V|R|W|X
    mem.write_u64(0x2000, 0x301D)
    mem.write_u64(0x3000, 0x401D)
    mem.write_u64(0x4000, 0x10000 | 0x1 | 0x4 | 0x8 | 0x20 | 0x40)   # V|R|W|A|M, no VPTE_X
    desc = replace(vm(mem, options={"layout": "old"}), backing=DictBacking(dict(HOST_PAGE)))
    desc.options["master_pde"] = 0x101D
    assert findings(desc, [host(0, 0x5550000, True, False)]) == []
    assert findings(desc, [host(0, 0x5550000, True, True)]) == [("permission", BASE)]


@pytest.mark.parametrize("options, ranges", [
    ({"image": None}, 1), ({"master_pde": None}, 1), ({"bogus": 1}, 1), ({}, 2),
    ({"nx_bit": 7}, 1)])
def test_bad_input_is_a_scenario_error(options: dict[str, object], ranges: int) -> None:
    desc = vm(image(), options=options)
    desc.ranges = tuple(MemRange(BASE + k * SIZE, SIZE) for k in range(ranges))
    with pytest.raises(ScenarioError):
        MODELS["dragonfly-vkernel"].expect(desc)


def test_an_unknown_layout_lists_the_known_ones() -> None:
    with pytest.raises(RegistryLookupError, match="valid: old, x86"):
        MODELS["dragonfly-vkernel"].expect(vm(image(), options={"layout": "vax"}))


def test_registered_for_the_x86_host_walk() -> None:
    assert MODELS["dragonfly-vkernel"].formats == ("npt",)


@settings(max_examples=100, deadline=None)
@given(page=st.integers(0, 3), kind=st.sampled_from(["frame", "w", "x", "vpte"]))
def test_injected_corruption_is_found_where_it_was_injected(page: int, kind: str) -> None:
    """Each corruption of one page yields its finding on that page and nothing else."""
    mem, hosts = image(), good_host()
    m = hosts[page]
    if kind == "frame":
        hosts[page] = m._replace(hpa=m.hpa ^ 0x100000)
    elif kind == "w":
        hosts[page] = m._replace(w=True)
    elif kind == "x":
        hosts[page] = m._replace(x=True)
    else:
        mem.write_u64(0x4000 + 8 * page, LEAVES[page] & ~V)
    got = findings(vm(mem), hosts)
    allowed_w = LEAVES[page] & RW and LEAVES[page] & M
    allowed_x = not LEAVES[page] & NX
    if (kind == "w" and allowed_w) or (kind == "x" and allowed_x):
        assert got == []        # the corruption is a permission the VPTE grants anyway
        return
    want = {"frame": "wrong_frame", "w": "permission", "x": "permission", "vpte": "stale"}
    assert got == [(want[kind], BASE + page * 0x1000)]


# ---------------------------------------------------------------- with the x86-64 host walk

def host_pmap(ptes: dict[int, int]) -> DictMem:
    """An x86-64 host pmap (root at 0x1000) with 4 KiB PTEs for the given VAs."""
    mem = DictMem(size=1 << 30)
    nxt = 0x2000
    for va, pte in ptes.items():
        table = 0x1000
        for shift in (39, 30, 21):
            slot = table + 8 * (va >> shift & 511)
            entry = int.from_bytes(mem.read(slot, 8), "little")
            if not entry:
                entry, nxt = nxt | 0x7, nxt + 0x1000      # P|RW|US
                mem.write_u64(slot, entry)
            table = entry & ~0xFFF
        mem.write_u64(table + 8 * (va >> 12 & 511), pte)
    return mem


def test_judging_the_npt_walk_of_a_host_pmap() -> None:
    phys = DictMem(size=1 << 30)
    flat = image()
    resident = {off: 0x100000 + off * 3 for off in (0x1000, 0x2000, 0x3000, 0x4000)}
    for off, pa in resident.items():
        phys.write(pa, flat.read(off, 0x1000))
    img = ObjectImage(phys, {**resident, **HOST_PAGE}, size=16 << 20)
    P, W, U = 0x1, 0x2, 0x4
    ptes = {BASE: 0x5550000 | P | W | U, BASE + 0x1000: 0x5551000 | P | U,
            BASE + 0x2000: 0x5552000 | P | U | HOST_NX}
    desc = VMDesc(name="vk0", ranges=(MemRange(BASE, SIZE),), backing=img,
                  options={"image": img, "master_pde": 0x1003})
    exp = MODELS["dragonfly-vkernel"].expect(desc)
    res = FORMATS["npt"].walk(host_pmap(ptes), 0x1000, NptParams())
    assert len(res.mappings) == 3 and diff(res, exp) == []
    ptes[BASE + 0x1000] |= W                            # clean VPTE, writable host PTE
    ptes[BASE + 0x3000 + 0x1000] = 0x5554000 | P | U    # VA page 4 has no VPTE
    res = FORMATS["npt"].walk(host_pmap(ptes), 0x1000, NptParams())
    assert [(f.kind, f.gpa) for f in diff(res, exp)] == [
        ("permission", BASE + 0x1000), ("stale", BASE + 0x4000)]


def test_host_block_is_judged_against_each_page_vpte() -> None:
    # The caps come from each page's own VPTE path, so a host leaf larger than a page must
    # respect every page it covers: a 2 MiB writable host leaf over 512 dirty VPTEs passes;
    # one clean VPTE among them is one permission finding, at that page only.
    mem = DictMem(size=16 << 20)
    mem.write_u64(0x1000, 0x2003)
    mem.write_u64(0x2000, 0x3003)
    mem.write_u64(0x3000, 0x4003)
    image_base, l1_base = 0x200000, 0x6000000
    for i in range(512):
        mem.write_u64(0x4000 + 8 * i, (image_base + i * 0x1000) | V | RW | A | M)
    backing = {image_base + i * 0x1000: l1_base + i * 0x1000 for i in range(512)}
    desc = VMDesc(name="vk0", ranges=(MemRange(BASE, SIZE, name="vpagetable"),),
                  backing=DictBacking(backing), options={"image": mem, "master_pde": 0x1003})
    block = Mapping(gpa=BASE, hpa=l1_base, size=2 << 20, r=True, w=True, x=True, level=2,
                    raw=l1_base | 0xA7)
    assert findings(desc, [block]) == []
    mem.write_u64(0x4000 + 8 * 7, (image_base + 7 * 0x1000) | V | RW | A)    # clean
    assert findings(desc, [block]) == [("permission", BASE + 7 * 0x1000)]
