"""openbsd-vmm and openbsd-vmm-old on vmd's memory map with hand-written EPT/NPT leaves."""

from __future__ import annotations

from harness.diff import diff
from harness.findings import Finding
from harness.formats.base import Mapping, WalkResult
from harness.models import MODELS
from harness.models.base import Access, DictBacking, MemRange, VMDesc
from harness.models.openbsd import empty_tables, mem_range, table_leftovers
from harness.models.vmd_memmap import create_memory_map, cross_check

PAGE = 4096
RANGES = tuple(create_memory_map(256 << 20))
VMR_VA = 0x7F7F00000000       # vmd's vmr_va of every range: gpa -> vmr_va + gpa


def vmd_backing() -> DictBacking:
    """Backing of the first pages of each non-MMIO range, as vmd's pmap would give them."""
    pages = {}
    for rng in RANGES:
        if rng.kind != "mmio":
            for i in range(8):
                gpa = rng.gpa + i * PAGE
                pages[gpa] = 0x6000000 + ((VMR_VA + gpa) >> 12 & 0xFFFF) * PAGE * 3
    return DictBacking(pages)


BACKING = vmd_backing()
TOUCHES = (Access(0x0, "x"), Access(0xB8000 - 0x18000, "w"), Access(0x100000, "r"),
           Access(0x101000, "w"))


def vm(touched: tuple[Access, ...] = TOUCHES, **kw: object) -> VMDesc:
    return VMDesc("vmd1", RANGES, BACKING, touched, **kw)


def ept(gpa: int, hpa: int | None = None, low: int = 0x037, size: int = PAGE) -> Mapping:
    """An EPT leaf with the given low 12 bits, decoded the way the EPT walker does."""
    frame = BACKING.pages[gpa] if hpa is None else hpa
    return Mapping(gpa=gpa, hpa=frame, size=size, r=bool(low & 1), w=bool(low & 2),
                   x=bool(low & 4), level=1, raw=frame | low, memtype=(low >> 3) & 7,
                   accessed=bool(low & 0x100), dirty=bool(low & 0x200))


def npt(gpa: int, w: bool = True) -> Mapping:
    frame = BACKING.pages[gpa]
    return Mapping(gpa=gpa, hpa=frame, size=PAGE, r=True, w=w, x=True, level=1,
                   raw=frame | 0x65 | (2 if w else 0))


GOOD = [ept(a.gpa) for a in TOUCHES]


def run(model: str, desc: VMDesc, leaves: list[Mapping]) -> list[Finding]:
    return diff(WalkResult(mappings=leaves), MODELS[model].expect(desc))


def kinds_at(findings: list[Finding]) -> set[tuple[str, int | None]]:
    return {(f.kind, f.gpa) for f in findings}


def test_good_ept_and_npt() -> None:
    assert run("openbsd-vmm", vm(options={"format": "ept"}), GOOD) == []
    assert run("openbsd-vmm", vm(options={"format": "npt"}), [npt(a.gpa) for a in TOUCHES]) == []


def test_reserved_range_is_mapped_like_ram() -> None:
    assert RANGES[1].kind == "reserved"
    assert run("openbsd-vmm", vm((Access(0xA0000, "w"),)), [ept(0xA0000)]) == []


def test_wrong_frame() -> None:
    leaves = [*GOOD[:2], ept(0x100000, hpa=0x9000), GOOD[3]]
    found = run("openbsd-vmm", vm(), leaves)
    assert kinds_at(found) == {("wrong_frame", 0x100000)}
    assert found[0].expected == BACKING.pages[0x100000]


def test_mapping_in_mmio() -> None:
    found = run("openbsd-vmm", vm(), [*GOOD, ept(0xF0000000, hpa=0x5000)])
    assert kinds_at(found) == {("unexpected", 0xF0000000)}
    assert "mmio" in found[0].detail


def test_mapping_outside_ranges() -> None:
    assert kinds_at(run("openbsd-vmm", vm(), [*GOOD, ept(0x20000000, hpa=0x5000)])) == {
        ("unexpected", 0x20000000)}


def test_missing_touched_page() -> None:
    assert kinds_at(run("openbsd-vmm", vm(), GOOD[1:])) == {("missing", 0x0)}


def test_permission_not_rwx() -> None:
    leaves = [*GOOD[:2], ept(0x100000, low=0x035), GOOD[3]]
    found = run("openbsd-vmm", vm(), leaves)
    assert kinds_at(found) == {("permission", 0x100000)}
    assert (found[0].expected, found[0].observed) == ("rwx", "r-x")


EPT_OPTS = {"format": "ept"}


def test_memtype_and_ipat() -> None:
    for low in (0x007, 0x077):           # UC; WB with IPAT
        leaves = [*GOOD[:2], ept(0x100000, low=low), GOOD[3]]
        assert kinds_at(run("openbsd-vmm", vm(options=EPT_OPTS), leaves)) == {
            ("memtype", 0x100000)}
        # without the format the EPT low-bit rules are not judged (an NPT leaf has a
        # memory type too)
        assert run("openbsd-vmm", vm(), leaves) == []


def test_ad_bits_new_versus_old() -> None:
    leaves = [*GOOD[:2], ept(0x100000, low=0x137), GOOD[3]]
    assert kinds_at(run("openbsd-vmm", vm(options=EPT_OPTS), leaves)) == {
        ("bad_entry", 0x100000)}
    assert run("openbsd-vmm-old", vm(options=EPT_OPTS), leaves) == []
    assert kinds_at(run("openbsd-vmm-old", vm(options={"ad_bits": False, **EPT_OPTS}),
                        leaves)) == {("bad_entry", 0x100000)}


def test_old_design_read_page_may_be_read_only() -> None:
    leaves = [*GOOD[:2], ept(0x100000, low=0x035), GOOD[3]]
    assert run("openbsd-vmm-old", vm(), leaves) == []
    leaves = [*GOOD[:3], ept(0x101000, low=0x035)]
    assert kinds_at(run("openbsd-vmm-old", vm(), leaves)) == {("permission", 0x101000)}


def test_huge_leaf_is_bad_entry() -> None:
    found = run("openbsd-vmm", vm(()), [ept(0x200000, hpa=0x40000000, low=0xB7,
                                            size=2 << 20)])
    assert ("bad_entry", 0x200000) in kinds_at(found)


def test_torn_down_and_removed() -> None:
    assert kinds_at(run("openbsd-vmm", vm(torn_down=True), GOOD[:1])) == {("leftover", 0x0)}
    removed = vm(TOUCHES[:2], removed=(0x100000,))
    found = run("openbsd-vmm", removed, [*GOOD[:2], ept(0x100000)])
    assert kinds_at(found) == {("leftover", 0x100000)}


def test_table_leftovers_with_no_leaf() -> None:
    assert table_leftovers(vm(torn_down=True), {0x1000}, root=0x1000) == []
    found = table_leftovers(vm(torn_down=True), {0x1000, 0x7000, 0x3000}, root=0x1000)
    assert [(f.kind, f.observed) for f in found] == [("leftover", 0x3000), ("leftover", 0x7000)]


def test_empty_tables_counted() -> None:
    walk = WalkResult(mappings=list(GOOD), tables_read=1 + 1 + 1 + 1)
    assert empty_tables(vm(), walk) == []          # all four leaves under one PDPT/PD/PT
    walk = WalkResult(mappings=[], tables_read=2)
    assert [f.kind for f in empty_tables(vm(torn_down=True), walk)] == ["leftover"]
    walk = WalkResult(mappings=[ept(0x0)], tables_read=5)
    assert empty_tables(vm(), walk)[0].observed == 5


def test_registered_formats() -> None:
    assert MODELS["openbsd-vmm"].formats == ("ept", "npt")
    assert MODELS["openbsd-vmm-old"].formats == ("ept",)
    assert MemRange(0, PAGE).kind == "ram"


# ---- through the real EPT walker: pmap_enter_ept's entries ----

def ept_tables(leaves: dict[int, int]) -> tuple[object, int]:
    """A 4-level EPT as pmap_enter_ept builds it (non-leaf low bits 0x7) below 2 MiB."""
    from harness.mem import DictMem

    mem = DictMem(size=1 << 31)
    for table, child in ((0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)):
        mem.write_u64(table, child | 0x7)
    for gpa, entry in leaves.items():
        mem.write_u64(0x4000 + 8 * (gpa >> 12), entry)
    return mem, 0x1000


def test_ept_walk_of_openbsd_tables() -> None:
    from harness.formats.ept import EptParams, walk

    entries = {a.gpa: BACKING.pages[a.gpa] | 0x037 for a in TOUCHES}
    mem, root = ept_tables(entries)
    result = walk(mem, root, EptParams())
    assert run("openbsd-vmm", vm(options={"format": "ept"}), result.mappings) == []
    assert empty_tables(vm(), result) == []
    mem.write_u64(0x4000 + 8, BACKING.pages[0x1000] | 0x077)     # injected: IPAT
    entries[0x100000] |= 0x100                                    # and an A bit
    mem.write_u64(0x4000 + 8 * 0x100, entries[0x100000])
    found = run("openbsd-vmm", vm(options={"format": "ept"}), walk(mem, root).mappings)
    assert kinds_at(found) == {("memtype", 0x1000), ("bad_entry", 0x100000)}


def test_teardown_walk_with_empty_tables_is_leftover() -> None:
    from harness.formats.ept import walk

    mem, root = ept_tables({})                  # every leaf gone, the tables kept
    result = walk(mem, root)
    gone = vm(torn_down=True)
    assert result.mappings == []
    assert run("openbsd-vmm", gone, result.mappings) == []
    assert [f.kind for f in empty_tables(gone, result)] == ["leftover"]


def test_live_vm_memranges_cross_check_with_vmd() -> None:
    live = [mem_range(0x0, VMR_VA, 0xA0000, 0, 0), mem_range(0xA0000, VMR_VA + 0xA0000,
                                                            0x60000, 1, 1),
            mem_range(0x100000, VMR_VA + 0x100000, 0xFF00000, 0, 2),
            mem_range(0xF0000000, 0, 0xFE00000, 2, 3),
            mem_range(0xFFE00000, VMR_VA + 0x10000000, 0x200000, 1, 4)]
    assert cross_check(list(RANGES), live) == []
    assert live[2].hva == VMR_VA + 0x100000


def test_block_is_one_bad_entry_and_judged_as_one_leaf() -> None:
    # pmap_enter_ept() never sets EPT_PS: every leaf is one 4 KiB page.  A 2 MiB block
    # (RAM range 2 at 0x100000 covers 0x200000..0x400000) is one bad_entry for the whole
    # leaf, and the old design's W rule takes the accesses of all its pages.
    gpa, size = 0x200000, 2 << 20
    backing = DictBacking({**BACKING.pages,
                           **{gpa + i * PAGE: 0x40000000 + i * PAGE for i in range(512)}})
    written = (Access(gpa + 0x7000, "w"),)
    block = Mapping(gpa=gpa, hpa=0x40000000, size=size, r=True, w=False, x=True, level=2,
                    raw=0x40000000 | 0xB5, memtype=6)
    desc = VMDesc("vmd1", RANGES, backing, written, options=EPT_OPTS)
    found = run("openbsd-vmm-old", desc, [block])
    assert {(f.kind, f.gpa, f.end) for f in found if f.gpa == gpa} == {
        ("bad_entry", gpa, None), ("permission", gpa, gpa + size)}
    ok = block._replace(w=True, raw=0x40000000 | 0xB7)
    assert {f.kind for f in run("openbsd-vmm-old", desc, [ok])} == {"bad_entry"}
