"""Injections through each format's leaf editor, per level: the checker must catch each one.

Tables are built by the independent encoder (tests/unit/encoders.py), walked by the real
walkers, corrupted by :func:`harness.inject.corrupt`, walked again and judged by the KVM
models; every injection must give its finding at the victim's GPA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from encoders import Encoder, EptEncoder, NptEncoder, Spec, Stage2Encoder, build

from harness.diff import coalesce, diff
from harness.findings import Finding
from harness.formats import FORMATS
from harness.formats.base import Mapping
from harness.formats.ept import EptParams
from harness.formats.npt import NptCodec, NptParams
from harness.formats.stage2 import Stage2Params
from harness.inject import EXPECTED_FINDING, INJECT_KINDS, Target, corrupt, target_frame
from harness.mem import DictMem
from harness.models import MODELS
from harness.models.base import Access, DictBacking, MemRange, VMDesc

PAGE = 4096
ROOT = 0x10000


@dataclass(frozen=True)
class Case:
    """One format as KVM writes it: encoder, walk parameters, model and its options."""

    fmt: str
    encoder: Encoder
    params: Any
    top_level: int
    root_pages: int
    model: str
    options: dict[str, Any]


CASES = {
    "npt": Case("npt", NptEncoder(kvm=True), NptParams(flavour="kvm", maxphyaddr=40), 4, 1,
                "kvm-x86", {"format": "npt"}),
    "ept": Case("ept", EptEncoder(flavour="kvm"), EptParams(flavour="kvm", maxphyaddr=40), 4,
                1, "kvm-x86", {"format": "ept"}),
    "stage2": Case("stage2", Stage2Encoder(), Stage2Params(ia_bits=40, start_level=1), 3, 2,
                   "kvm-arm64", {}),
}
SIZES = {1: PAGE, 2: 2 << 20}


def victim_and_other(level: int) -> tuple[Spec, Spec]:
    """The leaf to corrupt and another leaf of the same size (the aliasing target)."""
    size = SIZES[level]
    victim = Spec(0x40000000, 0x20000000, size, True, True, True)
    other = Spec(0x40000000 + 4 * size, 0x28000000, size, True, True, True)
    return victim, other


def inside(s: Spec) -> int:
    """The page of leaf *s* the guest touches: its fourth page, or its only one."""
    return s.gpa + min(0x3000, s.size - PAGE)


def setup(case: Case, level: int) -> tuple[DictMem, VMDesc, Spec, Spec]:
    """Tables holding both leaves; the VM that KVM would have built them for."""
    victim, other = victim_and_other(level)
    mem = DictMem(size=1 << 22)
    build(mem, case.encoder, ROOT, case.top_level, [victim, other], case.root_pages)
    backing = {s.gpa + off: s.hpa + off for s in (victim, other)
               for off in range(0, s.size, PAGE)}
    slot = MemRange(victim.gpa, other.gpa + other.size - victim.gpa)
    touched = (Access(inside(victim), "w"), Access(inside(victim), "x"),
               Access(other.gpa, "r"), Access(other.gpa, "x"))
    desc = VMDesc("vm0", (slot,), DictBacking(backing), touched, options=dict(case.options))
    return mem, desc, victim, other


def judge(case: Case, mem: DictMem, desc: VMDesc) -> list[Finding]:
    result = FORMATS[case.fmt].walk(mem, ROOT, case.params)
    return coalesce(diff(result, MODELS[case.model].expect(desc)))


def leaf_of(case: Case, mem: DictMem, gpa: int) -> Mapping:
    result = FORMATS[case.fmt].walk(mem, ROOT, case.params)
    [m] = [m for m in result.mappings if m.gpa <= gpa < m.end]
    return m


def covers(f: Finding, gpa: int) -> bool:
    return f.gpa is not None and f.gpa <= gpa < (f.end or f.gpa + PAGE)


@pytest.mark.parametrize("fmt", sorted(CASES))
@pytest.mark.parametrize("level", sorted(SIZES))
def test_tables_as_built_pass(fmt: str, level: int) -> None:
    case = CASES[fmt]
    mem, desc, victim, _ = setup(case, level)
    assert judge(case, mem, desc) == []
    assert leaf_of(case, mem, victim.gpa).level == level


@pytest.mark.parametrize("fmt", sorted(CASES))
@pytest.mark.parametrize("level", sorted(SIZES))
@pytest.mark.parametrize("kind", INJECT_KINDS)
def test_each_injection_gives_its_finding_at_the_victim(fmt: str, level: int,
                                                        kind: str) -> None:
    case = CASES[fmt]
    mem, desc, victim, _ = setup(case, level)
    m = leaf_of(case, mem, victim.gpa)
    editor = FORMATS[fmt].editor(case.params)       # type: ignore[misc]
    new = corrupt(editor, kind, m, permission="w")
    assert new != m.raw
    mem.write_u64(m.entry, new)
    found = judge(case, mem, desc)
    touched = inside(victim)
    hits = [f for f in found if f.kind == EXPECTED_FINDING[kind] and covers(f, touched)]
    assert hits, f"{kind} at level {level}: {[f.summary() for f in found]}"
    assert all(covers(f, touched) or covers(f, victim.gpa) for f in found)
    structural = [f for f in found if f.kind == "reserved_bits"]
    assert all((f.entry, f.level, f.raw) == (m.entry, level, new) for f in structural)


@pytest.mark.parametrize("fmt", sorted(CASES))
@pytest.mark.parametrize("level", sorted(SIZES))
@pytest.mark.parametrize("perm", ["r", "w", "x"])
def test_each_permission_taken_away(fmt: str, level: int, perm: str) -> None:
    case = CASES[fmt]
    mem, desc, victim, _ = setup(case, level)
    m = leaf_of(case, mem, victim.gpa)
    mem.write_u64(m.entry, corrupt(FORMATS[fmt].editor(case.params),  # type: ignore[misc]
                                   "permission", m, permission=perm))
    after = leaf_of(case, mem, victim.gpa)
    assert not getattr(after, perm)
    assert any(f.kind == "permission" and covers(f, inside(victim))
               for f in judge(case, mem, desc))


@pytest.mark.parametrize("fmt", sorted(CASES))
@pytest.mark.parametrize("level", sorted(SIZES))
def test_frame_moves_by_the_leaf_size(fmt: str, level: int) -> None:
    case = CASES[fmt]
    mem, _, victim, _ = setup(case, level)
    m = leaf_of(case, mem, victim.gpa)
    mem.write_u64(m.entry, corrupt(FORMATS[fmt].editor(case.params), "frame", m))  # type: ignore[misc]
    assert abs(leaf_of(case, mem, victim.gpa).hpa - victim.hpa) == victim.size


@pytest.mark.parametrize("fmt", sorted(CASES))
@pytest.mark.parametrize("level", sorted(SIZES))
def test_frame_onto_another_gpa_aliases_it(fmt: str, level: int) -> None:
    # the aliasing a teardown bug produces: the victim maps the frame of another GPA
    case = CASES[fmt]
    mem, desc, victim, other = setup(case, level)
    m = leaf_of(case, mem, victim.gpa)
    assert isinstance(desc.backing, DictBacking)
    frame = target_frame(m, Target(gpa=other.gpa), desc.backing.pages.get)
    assert frame == other.hpa
    mem.write_u64(m.entry, corrupt(FORMATS[fmt].editor(case.params), "frame", m,  # type: ignore[misc]
                                   frame=frame))
    found = [f for f in judge(case, mem, desc) if f.kind == "wrong_frame"]
    assert [(f.gpa, f.expected, f.observed) for f in found] == [
        (victim.gpa, victim.hpa, other.hpa)]
    assert found[0].end == (victim.gpa + victim.size if level > 1 else None)


def test_npt_2m_frame_is_bit_21_and_pat_stays() -> None:
    codec = NptCodec(NptParams())
    raw = 0x20000000 | 1 << 12 | 0xE7          # 2 MiB leaf with PAT set
    m = Mapping(0x40000000, 0x20000000, 2 << 20, True, True, True, 2, raw, memtype=4)
    new = corrupt(codec, "frame", m)
    assert new ^ raw == 1 << 21
    assert new & 1 << 12


def test_frame_target_must_fit_the_leaf() -> None:
    codec = NptCodec(NptParams())
    m = Mapping(0x40000000, 0x20000000, 2 << 20, True, True, True, 2, 0x200000E7)
    with pytest.raises(ValueError, match="aligned"):
        target_frame(m, Target(hpa=0x20001000), {}.get)
    with pytest.raises(ValueError, match="no frame backs"):
        target_frame(m, Target(gpa=0x1000), {}.get)
    with pytest.raises(ValueError, match="own frame"):
        target_frame(m, Target(hpa=0x20000000), {}.get)
    with pytest.raises(ValueError):
        codec.with_frame(m.raw, 2, 0x20001000)
    with pytest.raises(ValueError):
        Target()


def test_npt_pte_has_no_reserved_bit_at_maxphyaddr_52() -> None:
    pte = Mapping(0x1000, 0x5000, PAGE, True, True, True, 1, 0x5E67)
    assert corrupt(NptCodec(NptParams(maxphyaddr=40)), "reserved_bit", pte) == 0x5E67 | 1 << 51
    with pytest.raises(ValueError, match="MAXPHYADDR 52"):
        corrupt(NptCodec(NptParams(maxphyaddr=52)), "reserved_bit", pte)
    big = pte._replace(level=2, size=2 << 20, hpa=0x200000, raw=0x200EE7)
    assert corrupt(NptCodec(NptParams(maxphyaddr=52)), "reserved_bit", big) == 0x200EE7 | 1 << 13


def test_neighbour_frame_stays_in_memory() -> None:
    m = Mapping(0x0, 0x3FC00000, 2 << 20, True, True, True, 2, 0x3FC000E7)
    new = corrupt(NptCodec(NptParams()), "frame", m, mem_size=0x3FE00000)
    assert new & ~0xFFF == 0x3FA00000


def test_every_format_with_an_editor_is_injectable() -> None:
    assert {name for name, f in FORMATS.items() if f.editor is not None} == set(CASES)
    with pytest.raises(ValueError, match="unknown injection"):
        corrupt(NptCodec(NptParams()), "bogus",
                Mapping(0, 0x5000, PAGE, True, True, True, 1, 0x5E67))


# Leaves as read on live L1s: KVM on Intel VMX under Bochs (RWX, WB, IPAT, A, D, bits 11 57
# 58) and KVM on AMD SVM under QEMU's TCG (P RW US A D, bit 11).  Each injection must change
# them in a way the walker sees (ORing memory type 2 into WB, 6, left a live leaf unchanged).
LIVE_LEAF = {"ept": (0x0600_0000_0E3B_1B77, EptParams(flavour="kvm", maxphyaddr=40,
                                                       ad_enabled=True)),
             "npt": (0x0000_0000_0E3B_1E67, NptParams(flavour="kvm", maxphyaddr=40))}


@pytest.mark.parametrize("fmt", sorted(LIVE_LEAF))
@pytest.mark.parametrize("kind", INJECT_KINDS)
def test_each_injection_changes_a_live_leaf(fmt: str, kind: str) -> None:
    raw, params = LIVE_LEAF[fmt]
    table = {"ept": 0x907, "npt": 0x867}[fmt]            # KVM's non-leaf entries
    mem = DictMem(size=1 << 29)
    for parent, child in ((0x1000, 0x2000), (0x2000, 0x3000), (0x3000, 0x4000)):
        mem.write_u64(parent, child | table)
    mem.write_u64(0x4000 + 8 * 0x81, raw)
    [m] = FORMATS[fmt].walk(mem, 0x1000, params).mappings
    assert (m.gpa, m.hpa) == (0x81000, 0x0E3B_1000)
    bad = corrupt(FORMATS[fmt].editor(params), kind, m)        # type: ignore[misc]
    assert bad != raw
    mem.write_u64(m.entry, bad)
    after = FORMATS[fmt].walk(mem, 0x1000, params)
    if kind == "reserved_bit":
        assert "reserved_bits" in [f.kind for f in after.findings] and after.mappings == []
    elif kind == "frame":
        assert [(x.gpa, x.hpa) for x in after.mappings] == [(0x81000, 0x0E3B_0000)]
    elif kind == "clear":
        assert after.mappings == [] and after.findings == []
    else:
        assert after.mappings != [m]
