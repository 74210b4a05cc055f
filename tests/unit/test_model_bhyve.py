"""bhyve model: libvmmapi's layout, the boot ROM, EPT cache bits, A/D roles, superpages."""

from __future__ import annotations

from harness.diff import diff
from harness.findings import Finding
from harness.formats.base import Mapping, WalkResult
from harness.models import MODELS
from harness.models.base import Access, DictBacking, MemRange, VMDesc
from harness.models.bhyve import bootrom_range, vm_setup_memory

PAGE, GB = 4096, 1 << 30
EMUL_V, EMUL_RW = 1 << 52, 1 << 53
ROM = bootrom_range()
SYSMEM = vm_setup_memory(256 << 20)
RANGES = (*SYSMEM, MemRange(0xC0000000, 0x20000000, kind="mmio", name="pci"), ROM)
BACKING = DictBacking({**{i * PAGE: 0x30000000 + i * PAGE for i in range(1024)},
                       **{ROM.gpa + i * PAGE: 0x7000000 - i * PAGE for i in range(16)}})
TOUCHES = (Access(0x0, "x"), Access(0x1000, "r"), Access(0x2000, "w"), Access(ROM.gpa, "x"))


def vm(touched: tuple[Access, ...] = TOUCHES, ranges: tuple[MemRange, ...] = RANGES,
       **kw: object) -> VMDesc:
    return VMDesc("vm0", ranges, BACKING, touched, **kw)


def ept(gpa: int, *, w: bool = True, low: int = 0x70, size: int = PAGE, hpa: int | None = None,
        hw_w: bool | None = None, emul: bool = False) -> Mapping:
    """A FreeBSD EPT leaf: R|X|cache bits, W (or EMUL_RW), decoded like the EPT walker."""
    frame = BACKING.pages[gpa] if hpa is None else hpa
    raw = frame | low | 0x5 | (0x80 if size > PAGE else 0)
    if emul:
        raw |= EMUL_V | (EMUL_RW if w else 0) | (0x2 if hw_w else 0)
    elif w:
        raw |= 0x2
    return Mapping(gpa=gpa, hpa=frame, size=size, r=True, w=w, x=True, level=1, raw=raw,
                   memtype=(low >> 3) & 7)


GOOD = [ept(0x0), ept(0x1000), ept(0x2000), ept(ROM.gpa, w=False)]


def run(desc: VMDesc, leaves: list[Mapping]) -> list[Finding]:
    return diff(WalkResult(mappings=leaves), MODELS["bhyve"].expect(desc))


def kinds_at(findings: list[Finding]) -> set[tuple[str, int | None]]:
    return {(f.kind, f.gpa) for f in findings}


def test_vm_setup_memory_split() -> None:
    assert [(r.gpa, r.size) for r in vm_setup_memory(2 * GB)] == [(0, 2 * GB)]
    assert [(r.gpa, r.size) for r in vm_setup_memory(5 * GB)] == [(0, 3 * GB), (4 * GB, 2 * GB)]
    assert [(r.gpa, r.size) for r in vm_setup_memory(5 * GB, lowmem_limit=2 * GB)] == [
        (0, 2 * GB), (4 * GB, 3 * GB)]


def test_bootrom_range() -> None:
    assert (ROM.gpa, ROM.end, ROM.prot) == (0xFF000000, 0x100000000, "rx")


def test_good_vm() -> None:
    assert run(vm(), GOOD) == []


def test_rom_writable() -> None:
    found = run(vm(), [*GOOD[:3], ept(ROM.gpa, w=True)])
    assert kinds_at(found) == {("permission", ROM.gpa)}


def test_moved_rom() -> None:
    moved = bootrom_range(end=0xFF000000)
    ranges = (*SYSMEM, moved)
    assert kinds_at(run(vm((), ranges), [ept(ROM.gpa, w=False)])) == {("unexpected", ROM.gpa)}
    leaf = ept(moved.gpa, w=False, hpa=0x7000000)
    assert run(vm((), ranges), [leaf]) == []


def test_mapping_in_mmio_hole() -> None:
    found = run(vm(), [*GOOD, ept(0xC0000000, hpa=0x1000)])
    assert kinds_at(found) == {("unexpected", 0xC0000000)}


def test_wrong_frame_and_missing() -> None:
    found = run(vm(), [ept(0x0), ept(0x1000, hpa=0x5000), GOOD[3]])
    assert kinds_at(found) == {("wrong_frame", 0x1000), ("missing", 0x2000)}


def test_memtype_without_ipat() -> None:
    leaves = [*GOOD[:3], ept(ROM.gpa, w=False, low=0x30)]
    assert run(vm(), leaves) == []           # format unknown: cache bits not judged
    found = run(vm(options={"format": "ept"}), leaves)
    assert kinds_at(found) == {("memtype", ROM.gpa)}
    assert (found[0].expected, found[0].observed) == (0x70, 0x30)


def test_npt_has_no_memtype_rule() -> None:
    leaves = [ept(0x0, low=0), ept(0x1000, low=0), ept(0x2000, low=0), ept(ROM.gpa, w=False,
                                                                            low=0)]
    assert run(vm(options={"format": "npt"}), leaves) == []


def test_emulated_ad_not_yet_accessed_is_fine() -> None:
    leaves = [ept(0x0, emul=True), ept(0x1000, emul=True), ept(0x2000, emul=True, hw_w=True),
              ept(ROM.gpa, w=False, emul=True)]
    assert run(vm(options={"emulate_ad": True}), leaves) == []


def test_emulated_ad_hardware_write_without_permission() -> None:
    leaves = [ept(0x0, emul=True), ept(0x1000, emul=True), ept(0x2000, emul=True, hw_w=True),
              ept(ROM.gpa, w=False, emul=True, hw_w=True)]
    assert kinds_at(run(vm(options={"emulate_ad": True}), leaves)) == {("permission", ROM.gpa)}


def test_superpages_only_when_enabled() -> None:
    big = [ept(0x200000, size=2 << 20, hpa=0x30200000)]
    assert kinds_at(run(vm(()), big)) == {("bad_entry", 0x200000)}
    assert run(vm((), options={"superpages": True}), big) == []


def test_written_page_not_writable() -> None:
    found = run(vm(), [*GOOD[:2], ept(0x2000, w=False), GOOD[3]])
    assert kinds_at(found) == {("permission", 0x2000)}


def test_torn_down() -> None:
    assert kinds_at(run(vm(torn_down=True), GOOD[:1])) == {("leftover", 0x0)}


# ---- through the real EPT walker, FreeBSD emulated-A/D flavour ----

def test_emulated_ad_walk() -> None:
    from harness.formats.ept import EptParams, walk
    from harness.mem import DictMem

    mem = DictMem(size=1 << 31)
    for table, child in ((0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)):
        mem.write_u64(table, child | EMUL_V | EMUL_RW | 0x7)      # pmap_allocpte's PDE bits
    valid_rw = EMUL_V | EMUL_RW | 0x70 | 0x4                      # valid, RW allowed, X, WB+IPAT
    mem.write_u64(0x4000, BACKING.pages[0x0] | valid_rw | 0x1)            # accessed
    mem.write_u64(0x4008, BACKING.pages[0x1000] | valid_rw | 0x1)         # accessed
    mem.write_u64(0x4010, BACKING.pages[0x2000] | valid_rw | 0x3)         # accessed, dirty
    mem.write_u64(0x4018, BACKING.pages[0x3000] | valid_rw)               # not yet accessed
    params = EptParams(flavour="freebsd-emulated-ad")
    desc = vm(TOUCHES[:3], SYSMEM, options={"emulate_ad": True, "format": "ept"})
    result = walk(mem, 0x1000, params)
    assert len(result.mappings) == 4 and result.findings == []
    assert run(desc, result.mappings) == []
    mem.write_u64(0x4018, BACKING.pages[0x3000] | (valid_rw & ~EMUL_RW) | 0x3)  # W never granted
    found = run(desc, walk(mem, 0x1000, params).mappings)
    assert kinds_at(found) == {("permission", 0x3000)}


def test_superpage_permission_is_judged_per_leaf() -> None:
    # pmap_promote_pde() promotes only 512 PTEs of identical characteristics, and
    # vm_fault() enters a superpage with one protection: a 2 MiB leaf has one W for all
    # its pages.  One written page makes the leaf writable; one finding per leaf.
    big = MemRange(0x10000000, 2 << 20, kind="ram", prot="rwx", name="sysmem")
    backing = DictBacking({0x10000000 + i * PAGE: 0x50000000 + i * PAGE for i in range(512)})
    desc = VMDesc("vm0", (big,), backing, (Access(0x10007000, "w"), Access(0x10009000, "r")),
                  options={"format": "ept", "superpages": True})

    def leaf(w: bool) -> Mapping:
        raw = 0x50000000 | 0x70 | 0x5 | 0x80 | (0x2 if w else 0)
        return Mapping(0x10000000, 0x50000000, 2 << 20, True, w, True, 2, raw, memtype=6)
    assert run(desc, [leaf(True)]) == []
    found = run(desc, [leaf(False)])
    per_leaf = [f for f in found if f.gpa == 0x10000000]
    assert [(f.kind, f.end) for f in per_leaf] == [("permission", 0x10200000)]
    # the written page is also a required page, checked on its own
    assert {(f.kind, f.gpa) for f in found} == {("permission", 0x10000000),
                                                 ("permission", 0x10007000)}
