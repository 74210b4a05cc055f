"""Leaves as columns and the bulk diff, against a page-by-page oracle written here."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.diff import diff
from harness.findings import Finding
from harness.formats.base import Mapping, WalkResult
from harness.formats.leaves import Leaves
from harness.models.base import Expectation, ExpectedPage, ExpectedPages

PAGE = 4096
opt_bool = st.one_of(st.none(), st.booleans())


@st.composite
def leaves(draw: st.DrawFn) -> list[Mapping]:
    """Non-overlapping 4 KiB and 2 MiB leaves at random places (unsorted)."""
    out, used = [], set()
    for _ in range(draw(st.integers(0, 12))):
        size = draw(st.sampled_from([PAGE, 512 * PAGE]))
        gpa = draw(st.integers(0, 64)) * 512 * PAGE + \
            (0 if size > PAGE else draw(st.integers(0, 511)) * PAGE)
        span = set(range(gpa // PAGE, (gpa + size) // PAGE))
        if span & used:
            continue
        used |= span
        out.append(Mapping(gpa, draw(st.integers(0, 1 << 20)) * size, size, draw(st.booleans()),
                           draw(st.booleans()), draw(st.booleans()),
                           1 if size == PAGE else 2, draw(st.integers(0, 2**64 - 1)),
                           draw(st.one_of(st.none(), st.integers(0, 7))), draw(opt_bool),
                           draw(opt_bool), draw(st.integers(0, 1 << 40)) * PAGE,
                           draw(st.integers(0, 511))))
    return out


def pages_for(ms: list[Mapping], draw: st.DrawFn) -> list[ExpectedPage]:
    """Pages inside and outside the leaves, with right and wrong expectations."""
    out = []
    for m in ms[:6]:
        off = draw(st.integers(0, m.size // PAGE - 1)) * PAGE
        hpa = m.hpa + off + draw(st.sampled_from([0, 0, PAGE]))
        out.append(ExpectedPage(m.gpa + off, draw(st.sampled_from([None, hpa])),
                                draw(st.sampled_from([None, m.r, not m.r])),
                                draw(st.sampled_from([None, m.w])),
                                draw(st.sampled_from([None, m.x, not m.x])),
                                draw(st.sampled_from([None, m.memtype, 6]))))
    for _ in range(draw(st.integers(0, 4))):
        out.append(ExpectedPage(draw(st.integers(0, 1 << 20)) * PAGE, None))
    return out


def oracle(ms: list[Mapping], pages: list[ExpectedPage]) -> set[tuple[str, int]]:
    """(kind, gpa) of every disagreement, page by page, leaf by leaf."""
    out = set()
    for p in pages:
        m = next((m for m in ms if m.gpa <= p.gpa < m.gpa + m.size), None)
        if m is None:
            out.add(("missing", p.gpa))
            continue
        if p.hpa is not None and m.hpa + (p.gpa - m.gpa) != p.hpa:
            out.add(("wrong_frame", p.gpa))
        if any(getattr(p, k) is not None and getattr(p, k) != getattr(m, k) for k in "rwx"):
            out.add(("permission", p.gpa))
        if p.memtype is not None and p.memtype != m.memtype:
            out.add(("memtype", p.gpa))
    return out


def no_rule(m: Mapping) -> list[Finding]:
    return []


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_bulk_diff_agrees_with_the_page_by_page_oracle(data: st.DataObject) -> None:
    ms = data.draw(leaves())
    pages = pages_for(ms, data.draw)
    want = oracle(ms, pages)
    walk = WalkResult(list(ms))
    as_list = {(f.kind, f.gpa) for f in diff(walk, Expectation("vm", pages, no_rule))}
    as_cols = {(f.kind, f.gpa) for f in diff(walk, Expectation(
        "vm", ExpectedPages.of(pages), no_rule, lambda lv: []))}
    assert as_list == as_cols == {(k, g) for k, g in want}


@settings(max_examples=100, deadline=None)
@given(leaves())
def test_leaves_round_trip_mappings(ms: list[Mapping]) -> None:
    lv = Leaves.from_mappings(ms)
    assert lv.mappings() == ms and len(lv) == len(ms)
    assert [lv.mapping(i) for i in range(len(ms))] == ms
    ordered = lv.ascending().mappings()
    assert ordered == sorted(ms, key=lambda m: m.gpa)
    assert WalkResult(None, [], 0, leaves=lv).mappings == ms


def test_the_per_leaf_rule_runs_over_columns_when_the_model_gives_one() -> None:
    ms = [Mapping(0x1000, 0x9000, PAGE, True, True, True, 1, 0x9007),
          Mapping(0x5000, 0x2000, PAGE, True, False, True, 1, 0x2005)]
    seen: list[int] = []

    def bulk(lv: Leaves) -> list[Finding]:
        seen.append(len(lv))
        return [Finding("permission", "vm", int(g), "rw?", "r-x")
                for g, f in zip(lv.gpa.tolist(), lv.flags.tolist(), strict=True) if not f & 2]

    def per_leaf(m: Mapping) -> list[Finding]:
        raise AssertionError("not called when check_leaves is given")
    found = diff(WalkResult(ms), Expectation("vm", [], per_leaf, bulk))
    assert seen == [2] and [(f.kind, f.gpa) for f in found] == [("permission", 0x5000)]
