"""harness.diff: required pages, per-leaf rules, structural findings, dedup and coalesce."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from harness.diff import coalesce, diff, find_mapping, structural_findings
from harness.findings import Finding
from harness.formats.base import Mapping, StructuralFinding, WalkResult
from harness.models.base import Expectation, ExpectedPage

PAGE = 4096


def leaf(gpa: int, hpa: int, size: int = PAGE, w: bool = True, memtype: int | None = 6) -> Mapping:
    return Mapping(gpa=gpa, hpa=hpa, size=size, r=True, w=w, x=True, level=1,
                   raw=hpa | 0x37, memtype=memtype)


def no_rule(m: Mapping) -> list[Finding]:
    return []


def exp(required: list[ExpectedPage],
        check: Callable[[Mapping], list[Finding]] = no_rule) -> Expectation:
    return Expectation("vm0", required, check)


def test_find_mapping_inside_huge_leaf() -> None:
    ms = [leaf(0x0, 0x9000), leaf(0x200000, 0x400000, size=2 << 20)]
    assert find_mapping(ms, 0x3FF000) is ms[1]
    assert find_mapping(ms, 0x1000) is None
    assert find_mapping(ms, 0x400000) is None
    assert find_mapping([], 0) is None


def test_required_ok_and_missing() -> None:
    walk = WalkResult([leaf(0x200000, 0x400000, size=2 << 20)])
    ok = ExpectedPage(0x201000, 0x401000, r=True, w=True, x=True, memtype=6)
    gone = ExpectedPage(0x600000, 0x1000)
    found = diff(walk, exp([ok, gone]))
    assert [(f.kind, f.gpa, f.expected) for f in found] == [("missing", 0x600000, 0x1000)]


def test_required_wrong_frame_permission_memtype() -> None:
    walk = WalkResult([leaf(0x1000, 0x8000, w=False, memtype=0)])
    page = ExpectedPage(0x1000, 0x9000, r=True, w=True, memtype=6)
    found = {f.kind: f for f in diff(walk, exp([page]))}
    assert set(found) == {"wrong_frame", "permission", "memtype"}
    assert (found["wrong_frame"].expected, found["wrong_frame"].observed) == (0x9000, 0x8000)
    assert (found["permission"].expected, found["permission"].observed) == ("rw?", "r-x")
    assert (found["memtype"].expected, found["memtype"].observed) == (6, 0)


def test_unchecked_fields_are_not_compared() -> None:
    walk = WalkResult([leaf(0x1000, 0x8000, w=False, memtype=None)])
    assert diff(walk, exp([ExpectedPage(0x1000, None)])) == []


def test_check_rule_runs_on_every_leaf_and_dedups() -> None:
    seen: list[int] = []

    def rule(m: Mapping) -> list[Finding]:
        seen.append(m.gpa)
        return [Finding("permission", "vm0", m.gpa, "r-?", "rwx")]

    walk = WalkResult([leaf(0x2000, 0x1000, w=False), leaf(0x1000, 0x9000, w=False)])
    found = diff(walk, exp([ExpectedPage(0x1000, 0x9000, w=True)], rule))
    assert sorted(seen) == [0x1000, 0x2000]
    assert sorted((f.kind, f.gpa) for f in found) == [("permission", 0x1000),
                                                     ("permission", 0x2000)]


def test_structural_findings_carry_over() -> None:
    s = StructuralFinding("reserved_bits", gpa=0x5000, level=1, table=0x3000, index=5,
                          raw=0xDEAD, detail="bit 51")
    walk = WalkResult([], [s])
    assert structural_findings("vm0", walk)[0].detail == "level 1 table 0x3000[5] bit 51"
    assert [(f.kind, f.gpa, f.observed) for f in diff(walk, exp([]))] == [
        ("reserved_bits", 0x5000, 0xDEAD)]


def frames(n: int, start: int = 0x10000, hpa: int = 0x80000) -> list[Finding]:
    return [Finding("wrong_frame", "vm0", start + i * PAGE, hpa + i * PAGE, 0x5000 + i * PAGE,
                    detail="leaf 0x1") for i in range(n)]


def test_coalesce_merges_page_runs() -> None:
    out = coalesce(frames(3))
    assert len(out) == 1
    f = out[0]
    assert (f.gpa, f.end, f.expected, f.observed) == (0x10000, 0x13000, 0x80000, 0x5000)
    assert f.detail.endswith("(3 pages)")


def test_coalesce_keeps_gaps_kinds_and_vms_apart() -> None:
    a = frames(2)
    gap = Finding("wrong_frame", "vm0", 0x13000, 0x83000, 0x8000, detail="leaf 0x1")
    other_kind = Finding("missing", "vm0", 0x12000, 0x82000, None, detail="touched")
    other_vm = Finding("wrong_frame", "vm1", 0x12000, 0x82000, 0x7000, detail="leaf 0x1")
    out = coalesce([*a, gap, other_kind, other_vm])
    assert len(out) == 4
    assert {(f.vm, f.kind, f.gpa, f.end) for f in out} == {
        ("vm0", "wrong_frame", 0x10000, 0x12000), ("vm0", "wrong_frame", 0x13000, None),
        ("vm0", "missing", 0x12000, None), ("vm1", "wrong_frame", 0x12000, None)}


def test_coalesce_does_not_hide_different_values() -> None:
    perms = [Finding("permission", "vm0", 0x1000, "r-?", "rwx", "leaf 0x1"),
             Finding("permission", "vm0", 0x2000, "r-?", "rwx", "leaf 0x2"),
             Finding("permission", "vm0", 0x3000, "rw?", "r-x", "leaf 0x3")]
    out = coalesce(perms)
    assert [(f.gpa, f.end, f.observed) for f in out] == [(0x1000, 0x3000, "rwx"),
                                                       (0x3000, None, "r-x")]
    scattered = [Finding("wrong_frame", "vm0", 0x1000, 0x9000, 0x1000, "leaf 0x1"),
                 Finding("wrong_frame", "vm0", 0x2000, 0x3000, 0x2000, "leaf 0x1")]
    assert len(coalesce(scattered)) == 2


def test_coalesce_counts_pages_of_ranged_findings() -> None:
    ranged = Finding("unexpected", "vm0", 0x200000, None, 0x400000, "leaf 0x1",
                     end=0x400000)
    after = Finding("unexpected", "vm0", 0x400000, None, 0x600000, "leaf 0x2")
    out = coalesce([after, ranged])
    assert [(f.gpa, f.end) for f in out] == [(0x200000, 0x401000)]
    assert out[0].detail.endswith(f"({0x201000 // PAGE} pages)")


def test_coalesce_keeps_findings_without_gpa() -> None:
    f = Finding("leftover", "vm0", None, None, 0x3000, "table page 0x3000")
    g = Finding("leftover", "vm0", None, None, 0x4000, "table page 0x4000")
    assert sorted(x.observed for x in coalesce([f, g])) == [0x3000, 0x4000]


@given(st.sets(st.integers(min_value=0, max_value=200), max_size=60))
def test_coalesce_covers_exactly_the_pages(pages: set[int]) -> None:
    found = [Finding("missing", "vm0", p * PAGE, None, None, "touched") for p in pages]
    out = coalesce(found)
    covered = set()
    for f in out:
        end = f.end or f.gpa + PAGE
        covered |= set(range(f.gpa // PAGE, end // PAGE))
    assert covered == pages
    assert len(out) <= len(pages)


# ---- where a finding is: the entry, its level and raw value, the table holding it ----

def test_rule_findings_name_the_leaf_entry() -> None:
    big = Mapping(0x200000, 0x400000, 2 << 20, True, True, True, 2, 0x4000B7, memtype=6,
                  table=0x7000, index=1)

    def rule(m: Mapping) -> list[Finding]:
        return [Finding("permission", "vm0", m.gpa, "r-?", "rwx", end=m.end)]
    [f] = diff(WalkResult([big]), exp([], rule))
    assert (f.entry, f.level, f.raw, f.table) == (0x7008, 2, 0x4000B7, 0x7000)
    j = f.to_json()
    assert (j["entry"], j["raw"], j["table"], j["gpa"], j["end"]) == (
        "0x7008", "0x00000000004000b7", "0x7000", "0x200000", "0x400000")


def test_missing_page_is_not_present_not_none() -> None:
    [f] = diff(WalkResult([]), exp([ExpectedPage(0x3000, 0x9000)]))
    assert (f.kind, f.observed, f.entry) == ("missing", "not present", None)
    assert f.to_json()["observed"] == "not present"
    assert f.to_json()["expected"] == "0x9000"


def test_required_page_finding_names_its_leaf() -> None:
    m = leaf(0x1000, 0x8000, w=False)._replace(table=0x5000, index=1)
    [f] = diff(WalkResult([m]), exp([ExpectedPage(0x1000, 0x8000, w=True)]))
    assert (f.kind, f.entry, f.raw) == ("permission", 0x5008, m.raw)


def test_structural_finding_of_a_large_entry_covers_its_span() -> None:
    s = StructuralFinding("reserved_bits", 0x40000000, 2, 0x12000, 0, 0x20002E87)
    [f] = structural_findings("vm0", WalkResult(findings=[s]))
    assert (f.gpa, f.end, f.entry, f.level, f.raw) == (0x40000000, 0x40200000, 0x12000, 2,
                                                       0x20002E87)
    [small] = structural_findings("vm0", WalkResult(findings=[s.__class__(
        "reserved_bits", 0x1000, 1, 0x13000, 1, 0x5E67)]))
    assert (small.end, small.entry) == (None, 0x13008)


def test_coalesced_run_keeps_the_first_entry() -> None:
    run = [Finding("wrong_frame", "vm0", g, 0x9000 + g, 0x8000 + g, "leaf x",
                   entry=0x5000 + g // 512, level=1, raw=g, table=0x5000)
           for g in range(0, 3 * PAGE, PAGE)]
    [merged] = coalesce(run)
    assert (merged.gpa, merged.end, merged.entry, merged.table) == (0, 3 * PAGE, 0x5000, 0x5000)


def test_mapping_json_addresses_are_hex() -> None:
    m = Mapping(0x1000, 0x5000, PAGE, True, False, True, 1, 0x5025, memtype=0,
                table=0x9000, index=1)
    j = m.to_json()
    assert (j["gpa"], j["hpa"], j["size"], j["table"], j["entry"], j["raw"]) == (
        "0x1000", "0x5000", "0x1000", "0x9000", "0x9008", "0x0000000000005025")
    assert StructuralFinding("loop", 0, 4, 0x1000, 2, 0x1007).to_json()["entry"] == "0x1010"
