"""kvm-x86 and kvm-arm64 reference models on constructed VMs and hand-written leaves."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.diff import diff
from harness.errors import ScenarioError
from harness.findings import Finding
from harness.formats.base import Mapping, WalkResult
from harness.models import MODELS
from harness.models.base import Access, DictBacking, MemRange, VMDesc

PAGE = 4096
HUGE = 2 << 20
SLOT0 = MemRange(0x0, 0x10000, hva=0x7F0000000000)
SLOT_RO = MemRange(0x80000, 0x4000, hva=0x7F0000100000, flags=frozenset({"readonly"}))
SLOT_LOG = MemRange(0x100000, 0x4000, hva=0x7F0000200000, flags=frozenset({"dirty_log"}))
SLOT_BIG = MemRange(0x40000000, 2 * HUGE, hva=0x7F0040000000)


def scattered_backing() -> DictBacking:
    """Slot pages backed by scattered L1 pages (descending), the big slot contiguously."""
    pages: dict[int, int] = {}
    for rng, base in ((SLOT0, 0x3F000000), (SLOT_RO, 0x3E000000), (SLOT_LOG, 0x3D000000)):
        for i, gpa in enumerate(range(rng.gpa, rng.end, PAGE)):
            pages[gpa] = base - i * PAGE
    for i, gpa in enumerate(range(SLOT_BIG.gpa, SLOT_BIG.end, PAGE)):
        pages[gpa] = 0x20000000 + i * PAGE
    return DictBacking(pages)


BACKING = scattered_backing()


def vm(touched: tuple[Access, ...] = (), **kw: object) -> VMDesc:
    """A VM with all four slots and the scattered backing."""
    return VMDesc("vm0", (SLOT0, SLOT_RO, SLOT_LOG, SLOT_BIG), BACKING, touched, **kw)


def leaf(gpa: int, hpa: int | None = None, *, size: int = PAGE, r: bool = True,
         w: bool = True, x: bool = True, memtype: int | None = None) -> Mapping:
    """A leaf mapping *gpa* to its backing page unless *hpa* is given (NPT flags 0xe67)."""
    frame = BACKING.pages[gpa] if hpa is None else hpa
    return Mapping(gpa=gpa, hpa=frame, size=size, r=r, w=w, x=x,
                   level=1 if size == PAGE else 2, raw=frame | 0xE67, memtype=memtype)


def run(model: str, desc: VMDesc, leaves: list[Mapping]) -> list[Finding]:
    """The findings of *model* on *desc* for the observed *leaves*."""
    return diff(WalkResult(mappings=leaves), MODELS[model].expect(desc))


def kinds_at(findings: list[Finding]) -> set[tuple[str, int | None]]:
    return {(f.kind, f.gpa) for f in findings}


TOUCHES = (Access(0x0, "x"), Access(0x1000, "r"), Access(0x2000, "w"), Access(0x80000, "r"),
           Access(0x100000, "w"), Access(0x101000, "r"))
GOOD = [leaf(0x0), leaf(0x1000), leaf(0x2000), leaf(0x80000, w=False),
        leaf(0x100000), leaf(0x101000)]


def test_registered() -> None:
    assert "kvm-x86" in MODELS and "kvm-arm64" in MODELS
    assert set(MODELS["kvm-x86"].formats) == {"ept", "npt"}


def test_x86_good_vm_has_no_findings() -> None:
    assert run("kvm-x86", vm(TOUCHES, options={"format": "npt"}), GOOD) == []


def test_x86_required_pages_carry_backing_frames() -> None:
    exp = MODELS["kvm-x86"].expect(vm(TOUCHES))
    assert {p.gpa: p.hpa for p in exp.required} == {a.gpa: BACKING.pages[a.gpa] for a in TOUCHES}


def test_wrong_frame() -> None:
    leaves = [*GOOD[:1], leaf(0x1000, hpa=0x12345000), *GOOD[2:]]
    found = run("kvm-x86", vm(TOUCHES), leaves)
    assert kinds_at(found) == {("wrong_frame", 0x1000)}
    assert found[0].expected == BACKING.pages[0x1000] and found[0].observed == 0x12345000


def test_leaf_outside_slots_is_unexpected() -> None:
    found = run("kvm-x86", vm(TOUCHES), [*GOOD, leaf(0x90000, hpa=0x5000)])
    assert kinds_at(found) == {("unexpected", 0x90000)}


def test_missing_touched_page() -> None:
    found = run("kvm-x86", vm(TOUCHES), [g for g in GOOD if g.gpa != 0x2000])
    assert kinds_at(found) == {("missing", 0x2000)}


def test_readonly_slot_writable() -> None:
    leaves = [*GOOD[:3], leaf(0x80000, w=True), *GOOD[4:]]
    found = run("kvm-x86", vm(TOUCHES), leaves)
    assert kinds_at(found) == {("permission", 0x80000)}
    assert found[0].observed == "rwx" and found[0].expected[1] == "-"


def test_readonly_write_only_touch_not_required() -> None:
    exp = MODELS["kvm-x86"].expect(vm((Access(0x81000, "w"),)))
    assert exp.required == []


def test_written_page_must_be_writable() -> None:
    leaves = [*GOOD[:2], leaf(0x2000, w=False), *GOOD[3:]]
    assert kinds_at(run("kvm-x86", vm(TOUCHES), leaves)) == {("permission", 0x2000)}


def test_dirty_log_untouched_page_writable() -> None:
    found = run("kvm-x86", vm(TOUCHES), [*GOOD, leaf(0x102000)])
    assert kinds_at(found) == {("permission", 0x102000)}


def test_dirty_log_read_page_writable_only_flagged_when_strict() -> None:
    assert run("kvm-x86", vm(TOUCHES), GOOD) == []
    strict = vm(TOUCHES, options={"dirty_log_strict": True})
    assert kinds_at(run("kvm-x86", strict, GOOD)) == {("permission", 0x101000)}


def test_npt_leaf_must_be_executable() -> None:
    leaves = [*GOOD[:1], leaf(0x1000, x=False), *GOOD[2:]]
    assert kinds_at(run("kvm-x86", vm(TOUCHES), leaves)) == {("permission", 0x1000)}


def test_not_readable_leaf() -> None:
    leaves = [*GOOD[:1], leaf(0x1000, r=False), *GOOD[2:]]
    assert kinds_at(run("kvm-x86", vm(TOUCHES), leaves)) == {("permission", 0x1000)}


def test_huge_leaf_on_contiguous_backing() -> None:
    big = leaf(SLOT_BIG.gpa, size=HUGE)
    assert run("kvm-x86", vm((Access(SLOT_BIG.gpa + 0x5000, "w"),)), [big]) == []


def test_huge_leaf_over_scattered_backing() -> None:
    pages = dict(BACKING.pages)
    pages[SLOT_BIG.gpa + 0x7000] = 0x1000
    desc = VMDesc("vm0", (SLOT_BIG,), DictBacking(pages))
    found = run("kvm-x86", desc, [leaf(SLOT_BIG.gpa, size=HUGE)])
    assert kinds_at(found) == {("wrong_frame", SLOT_BIG.gpa + 0x7000)}
    assert found[0].expected == 0x1000


def test_huge_leaf_straddling_slot_end() -> None:
    desc = VMDesc("vm0", (MemRange(0x0, 0x100000),), DictBacking())
    found = run("kvm-x86", desc, [leaf(0x0, hpa=0x200000, size=HUGE)])
    assert [(f.kind, f.gpa, f.end) for f in found] == [("unexpected", 0x100000, HUGE)]


def test_nx_huge_pages_option() -> None:
    desc = vm(options={"nx_huge_pages": True})
    assert run("kvm-x86", desc, [leaf(SLOT_BIG.gpa, size=HUGE, x=False)]) == []
    found = run("kvm-x86", desc, [leaf(SLOT_BIG.gpa, size=HUGE, x=True)])
    assert {f.kind for f in found} == {"permission"} and found[0].gpa == SLOT_BIG.gpa


def test_ept_memtype_must_be_wb() -> None:
    ept = vm(TOUCHES, options={"format": "ept"})
    assert run("kvm-x86", ept, [leaf(g.gpa, w=g.w, memtype=6) for g in GOOD]) == []
    leaves = [leaf(g.gpa, w=g.w, memtype=0 if g.gpa == 0x1000 else 6) for g in GOOD]
    found = run("kvm-x86", ept, leaves)
    assert kinds_at(found) == {("memtype", 0x1000)}
    assert (found[0].expected, found[0].observed) == (6, 0)


def test_access_tracked_ept_spte() -> None:
    ept = vm(TOUCHES, options={"format": "ept"})
    tracked = leaf(0x1000, r=False, w=False, x=False, memtype=6)
    assert MODELS["kvm-x86"].expect(ept).check(tracked) == []
    # a touched page still needs R through the required list
    assert ("permission", 0x1000) in kinds_at(run("kvm-x86", ept, [tracked]))
    moved = leaf(0x1000, hpa=0x7000, r=False, w=False, x=False, memtype=6)
    assert kinds_at(MODELS["kvm-x86"].expect(ept).check(moved)) == {("wrong_frame", 0x1000)}


def test_npt_pat_index_must_be_zero() -> None:
    # make_spte() ORs in get_mt_mask() only when shadow_memtype_mask is set, which it is
    # not for NPT: KVM never writes PWT, PCD or PAT into an NPT leaf
    desc = vm(TOUCHES, options={"format": "npt"})
    assert run("kvm-x86", desc, [leaf(g.gpa, w=g.w, memtype=0) for g in GOOD]) == []
    for pat in range(1, 8):
        leaves = [leaf(g.gpa, w=g.w, memtype=pat if g.gpa == 0x1000 else 0) for g in GOOD]
        found = run("kvm-x86", desc, leaves)
        assert kinds_at(found) == {("memtype", 0x1000)}
        assert (found[0].expected, found[0].observed) == (0, pat)


def test_memtype_not_judged_without_format() -> None:
    # the hypervisor record names the format; without it NPT's and EPT's memtypes differ
    assert run("kvm-x86", vm(TOUCHES), [leaf(g.gpa, w=g.w, memtype=3) for g in GOOD]) == []


def test_ept_ipat_option() -> None:
    def ept_leaf(gpa: int, w: bool, ipat: bool) -> Mapping:
        frame = BACKING.pages[gpa]
        return Mapping(gpa, frame, PAGE, True, w, True, 1,
                       frame | 0x37 | (0x40 if ipat else 0), memtype=6)
    with_ipat = [ept_leaf(g.gpa, g.w, True) for g in GOOD]
    without = [ept_leaf(g.gpa, g.w, g.gpa != 0x2000) for g in GOOD]
    for ipat in (None, True):       # vmx_get_mt_mask(): WB | IPAT without non-coherent DMA
        assert run("kvm-x86", vm(TOUCHES, options={"format": "ept", "ipat": ipat}),
                   with_ipat) == []
    assert run("kvm-x86", vm(TOUCHES, options={"format": "ept"}), without) == []
    found = run("kvm-x86", vm(TOUCHES, options={"format": "ept", "ipat": True}), without)
    assert kinds_at(found) == {("memtype", 0x2000)} and "IPAT" in found[0].detail


def test_torn_down_leftover() -> None:
    found = run("kvm-x86", vm(TOUCHES, torn_down=True), GOOD[:2])
    assert kinds_at(found) == {("leftover", 0x0), ("leftover", 0x1000)}
    assert run("kvm-x86", vm(TOUCHES, torn_down=True), []) == []


def test_removed_slot_leftover() -> None:
    desc = vm(TOUCHES[:3], removed=(SLOT_LOG.gpa,))
    found = run("kvm-x86", desc, [*GOOD[:3], leaf(0x100000)])
    assert kinds_at(found) == {("leftover", 0x100000)}


def test_unknown_option() -> None:
    with pytest.raises(ScenarioError):
        MODELS["kvm-x86"].expect(vm(options={"nx_hugepages": True}))


# ---- arm64 stage-2 ----

def s2(gpa: int, *, w: bool = True, x: bool = False, memtype: int = 0xF,
       hpa: int | None = None) -> Mapping:
    """A stage-2 page descriptor like the ones seen on the live guest (AF, SH=3)."""
    frame = BACKING.pages[gpa] if hpa is None else hpa
    raw = frame | 0x703 | (memtype << 2) | 0x40 | (0x80 if w else 0) | (0 if x else 1 << 54)
    return Mapping(gpa=gpa, hpa=frame, size=PAGE, r=True, w=w, x=x, level=3, raw=raw,
                   memtype=memtype, accessed=True)


ARM_GOOD = [s2(0x0, x=True), s2(0x1000), s2(0x2000), s2(0x80000, w=False), s2(0x100000),
            s2(0x101000, w=False)]


def test_arm64_good_vm() -> None:
    assert run("kvm-arm64", vm(TOUCHES), ARM_GOOD) == []


def test_arm64_data_page_executable() -> None:
    leaves = [*ARM_GOOD[:1], s2(0x1000, x=True), *ARM_GOOD[2:]]
    assert kinds_at(run("kvm-arm64", vm(TOUCHES), leaves)) == {("permission", 0x1000)}
    assert run("kvm-arm64", vm(TOUCHES, options={"dic": True}), leaves) == []


def test_arm64_code_page_xn() -> None:
    leaves = [s2(0x0, x=False), *ARM_GOOD[1:]]
    assert kinds_at(run("kvm-arm64", vm(TOUCHES), leaves)) == {("permission", 0x0)}


def test_arm64_dirty_log_read_page_writable() -> None:
    leaves = [*ARM_GOOD[:5], s2(0x101000, w=True)]
    assert kinds_at(run("kvm-arm64", vm(TOUCHES), leaves)) == {("permission", 0x101000)}


def test_arm64_memtype_and_fwb() -> None:
    fwb = [s2(m.gpa, w=m.w, x=m.x, memtype=6) for m in ARM_GOOD]
    assert {f.kind for f in run("kvm-arm64", vm(TOUCHES, options={"fwb": False}), fwb)} == {
        "memtype"}
    assert run("kvm-arm64", vm(TOUCHES, options={"fwb": True}), fwb) == []
    assert run("kvm-arm64", vm(TOUCHES), fwb) == []            # unknown CPU: either encoding
    assert {f.kind for f in run("kvm-arm64", vm(TOUCHES, options={"fwb": True}),
                                ARM_GOOD)} == {"memtype"}
    device = [*ARM_GOOD[:1], s2(0x1000, memtype=1), *ARM_GOOD[2:]]
    assert kinds_at(run("kvm-arm64", vm(TOUCHES), device)) == {("memtype", 0x1000)}


def test_arm64_identity_vm() -> None:
    desc = VMDesc("internal", (MemRange(0x40000000, 0x100000),),
                  touched=(Access(0x40001000, "w"),), options={"identity": True})
    good = s2(0x40001000, hpa=0x40001000)
    assert run("kvm-arm64", desc, [good]) == []
    bad = s2(0x40001000, hpa=0x50001000)
    assert kinds_at(run("kvm-arm64", desc, [bad])) == {("wrong_frame", 0x40001000)}


# ---- through the real NPT walker (KVM flavour), leaves as seen on the live L1 ----

def test_npt_walk_of_kvm_tables() -> None:
    from harness.formats.npt import NptParams, walk
    from harness.mem import DictMem

    mem = DictMem(size=1 << 31)
    for table, child in ((0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)):
        mem.write_u64(table, child | 0xE27)          # P|RW|US|A + KVM bits 9-11
    touched = TOUCHES[:3]                            # slot 0 only: x, r, w
    for a in touched:
        mem.write_u64(0x4000 + 8 * (a.gpa >> 12), BACKING.pages[a.gpa] | 0xE67)
    desc = VMDesc("vm0", (SLOT0,), BACKING, touched, options={"format": "npt"})
    pt = 0x4000 + 8 * (0x1000 >> 12)
    assert run("kvm-x86", desc, walk(mem, 0x1000, NptParams(flavour="kvm")).mappings) == []
    mem.write_u64(pt, 0x5000 | 0xE67)                # injected: wrong frame for gpa 0x1000
    found = run("kvm-x86", desc, walk(mem, 0x1000, NptParams(flavour="kvm")).mappings)
    assert kinds_at(found) == {("wrong_frame", 0x1000)}
    mem.write_u64(pt, BACKING.pages[0x1000] | 0xE67 | 1 << 63)   # injected: NX
    found = run("kvm-x86", desc, walk(mem, 0x1000, NptParams(flavour="kvm")).mappings)
    assert kinds_at(found) == {("permission", 0x1000)}


# ---- properties: leaves built from the backing pass; any one corruption is caught ----

@given(st.sets(st.integers(min_value=0, max_value=15), min_size=1),
       st.integers(min_value=0, max_value=3), st.data())
def test_any_single_corruption_is_caught(pages: set[int], how: int, data: st.DataObject) -> None:
    touched = tuple(Access(p * PAGE, "w") for p in sorted(pages))
    leaves = [leaf(a.gpa) for a in touched]
    desc = vm(touched)
    assert run("kvm-x86", desc, leaves) == []
    i = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    victim = leaves[i]
    bad = [leaf(victim.gpa, hpa=victim.hpa ^ 0x100000),          # another frame
           leaf(victim.gpa, w=False),                            # written page read-only
           leaf(victim.gpa, x=False),                            # NPT leaf without X
           None][how]                                            # leaf gone
    corrupted = [*leaves[:i], *([bad] if bad else []), *leaves[i + 1:]]
    found = run("kvm-x86", desc, corrupted)
    assert {f.gpa for f in found} == {victim.gpa}
    assert {f.kind for f in found} == {("wrong_frame", "permission", "permission",
                                        "missing")[how]}


# ---- rules judged per leaf, on constructed 2 MiB blocks ----
#
# KVM decides a leaf's permissions at the fault that installs (or relaxes) it, for the
# whole leaf: arm64 user_mem_abort() adds KVM_PGTABLE_PROT_X on an exec fault to the
# vma_pagesize block it maps, so one executed page makes all 512 pages executable.

BLOCK = SLOT_BIG.gpa                                  # 2 MiB aligned, contiguous backing
SLOT_LOG_BIG = MemRange(0x80000000, HUGE, hva=0x7F0080000000, flags=frozenset({"dirty_log"}))
BIG_BACKING = DictBacking({**BACKING.pages, **{g: 0x30000000 + (g - SLOT_LOG_BIG.gpa)
                                               for g in range(SLOT_LOG_BIG.gpa,
                                                              SLOT_LOG_BIG.end, PAGE)}})


def s2_block(gpa: int, *, w: bool = True, x: bool = False) -> Mapping:
    """A stage-2 2 MiB block descriptor (type bit clear) over the contiguous backing."""
    frame = BIG_BACKING.pages[gpa]
    raw = frame | 0x701 | (0xF << 2) | 0x40 | (0x80 if w else 0) | (0 if x else 2 << 53)
    return Mapping(gpa=gpa, hpa=frame, size=HUGE, r=True, w=w, x=x, level=2, raw=raw,
                   memtype=0xF, accessed=True, table=0x5000, index=gpa >> 21 & 511)


def big_vm(touched: tuple[Access, ...], **kw: object) -> VMDesc:
    return VMDesc("vm0", (SLOT_BIG, SLOT_LOG_BIG), BIG_BACKING, touched, **kw)


def test_arm64_block_with_one_executed_page_is_executable() -> None:
    touched = (Access(BLOCK + 0x5000, "x"), Access(BLOCK + 0x7000, "r"),
               Access(BLOCK + 0x9000, "w"))
    assert run("kvm-arm64", big_vm(touched), [s2_block(BLOCK, x=True)]) == []


def test_arm64_block_never_executed_must_be_xn() -> None:
    touched = (Access(BLOCK + 0x7000, "r"), Access(BLOCK + 0x9000, "w"))
    assert run("kvm-arm64", big_vm(touched), [s2_block(BLOCK, x=False)]) == []
    found = run("kvm-arm64", big_vm(touched), [s2_block(BLOCK, x=True)])
    # one finding for the leaf as a whole, not one per page
    assert [(f.kind, f.gpa, f.end, f.expected, f.observed) for f in found] == [
        ("permission", BLOCK, BLOCK + HUGE, "rw-", "rwx")]
    assert (found[0].level, found[0].raw, found[0].entry) == (2, s2_block(BLOCK, x=True).raw,
                                                               0x5000 + 8 * (BLOCK >> 21 & 511))
    assert run("kvm-arm64", big_vm(touched, options={"dic": True}),
               [s2_block(BLOCK, x=True)]) == []


def test_arm64_executed_page_in_xn_block() -> None:
    touched = (Access(BLOCK + 0x5000, "x"),)
    found = run("kvm-arm64", big_vm(touched), [s2_block(BLOCK, x=False)])
    assert {f.kind for f in found} == {"permission"}
    assert all(f.gpa is not None and f.gpa <= BLOCK + 0x5000 < (f.end or f.gpa + PAGE)
               for f in found)


@pytest.mark.parametrize("model", ["kvm-x86", "kvm-arm64"])
def test_block_with_a_written_page_must_be_writable(model: str) -> None:
    touched = (Access(BLOCK + 0x9000, "w"), Access(BLOCK + 0x5000, "x"))
    block = (s2_block(BLOCK, w=False, x=True) if model == "kvm-arm64"
             else leaf(BLOCK, size=HUGE, w=False))
    found = run(model, big_vm(touched), [block])
    assert {f.kind for f in found} == {"permission"}
    assert any(f.gpa == BLOCK and f.end == BLOCK + HUGE for f in found)


@pytest.mark.parametrize("model", ["kvm-x86", "kvm-arm64"])
def test_dirty_logged_slot_has_4k_leaves_only(model: str) -> None:
    # x86 kvm_mmu_hugepage_adjust() returns when kvm_slot_dirty_track_enabled(slot);
    # arm64 user_mem_abort() sets force_pte when memslot_is_logging(memslot)
    gpa = SLOT_LOG_BIG.gpa
    touched = (Access(gpa + 0x1000, "w"),)
    ok = [Mapping(gpa + 0x1000, BIG_BACKING.pages[gpa + 0x1000], PAGE, True, True,
                  model == "kvm-x86", 1, BIG_BACKING.pages[gpa + 0x1000] | 0xE67)]
    assert run(model, big_vm(touched), ok) == []
    block = (s2_block(gpa, w=True) if model == "kvm-arm64"
             else Mapping(gpa, BIG_BACKING.pages[gpa], HUGE, True, True, True, 2,
                          BIG_BACKING.pages[gpa] | 0xEE7))
    found = run(model, big_vm(touched), [block])
    bad = [f for f in found if f.kind == "bad_entry"]
    assert [(f.gpa, f.end, f.expected, f.observed) for f in bad] == [
        (gpa, gpa + HUGE, PAGE, HUGE)]


def test_x86_huge_leaf_untouched_pages_pass() -> None:
    touched = (Access(BLOCK + 0x3000, "r"),)
    assert run("kvm-x86", big_vm(touched, options={"format": "npt"}),
               [leaf(BLOCK, size=HUGE, memtype=0)]) == []


def test_npt_2m_leaf_pat_bit_is_a_memtype_finding_not_a_frame() -> None:
    # bit 12 of a 2 MiB NPT leaf is PAT: the walker keeps the frame and reports PAT
    # index 4, which KVM never writes
    from harness.formats.npt import NptParams, walk
    from harness.mem import DictMem

    mem = DictMem(size=1 << 31)
    mem.write_u64(0x1000, 0x2000 | 0xE27)                          # PML4E 0
    mem.write_u64(0x2000 + 8 * (BLOCK >> 30), 0x3000 | 0xE27)      # PDPTE 1
    pde = 0x3000 + 8 * (BLOCK >> 21 & 511)
    mem.write_u64(pde, BIG_BACKING.pages[BLOCK] | 0xEE7)
    desc = big_vm((Access(BLOCK + 0x2000, "w"),), options={"format": "npt"})
    params = NptParams(flavour="kvm")
    assert run("kvm-x86", desc, walk(mem, 0x1000, params).mappings) == []
    mem.write_u64(pde, BIG_BACKING.pages[BLOCK] | 0xEE7 | 1 << 12)
    [m] = walk(mem, 0x1000, params).mappings
    assert (m.hpa, m.memtype) == (BIG_BACKING.pages[BLOCK], 4)
    found = run("kvm-x86", desc, [m])
    assert [(f.kind, f.gpa, f.end, f.entry) for f in found] == [("memtype", BLOCK,
                                                                 BLOCK + HUGE, pde)]
