"""Observed tables versus the reference model: findings, then ranges of findings."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import replace
from operator import attrgetter

import numpy as np

from harness.findings import NOT_PRESENT, Finding
from harness.formats.base import Mapping, WalkResult
from harness.formats.leaves import F_R, F_W, F_X, Leaves
from harness.formats.radix import level_shift
from harness.models.base import (
    Expectation,
    ExpectedPage,
    ExpectedPages,
    frame_findings,
    permission_findings,
)

__all__ = ["diff", "coalesce", "find_mapping", "structural_findings", "at_leaf"]


def find_mapping(mappings: list[Mapping], gpa: int,
                 starts: list[int] | None = None) -> Mapping | None:
    """The mapping covering *gpa* in a list sorted by gpa (binary search)."""
    keys = starts if starts is not None else [m.gpa for m in mappings]
    i = bisect.bisect_right(keys, gpa) - 1
    if i >= 0 and mappings[i].gpa <= gpa < mappings[i].end:
        return mappings[i]
    return None


def structural_findings(vm: str, walk: WalkResult) -> list[Finding]:
    """The walker's own findings, in the common Finding form.

    A finding about an entry above the last level covers the entry's whole span
    (``end``): a reserved bit in a 2 MiB leaf concerns all 512 of its pages.
    """
    return [Finding(kind=s.kind, vm=vm, gpa=s.gpa, expected=None, observed=s.raw,
                    detail=f"level {s.level} table {s.table:#x}[{s.index}] {s.detail}".rstrip(),
                    end=s.gpa + (1 << level_shift(s.level)) if s.level > 1 else None,
                    entry=s.table + 8 * s.index, level=s.level, raw=s.raw, table=s.table)
            for s in walk.findings]


def at_leaf(m: Mapping, found: Iterable[Finding]) -> list[Finding]:
    """*found* with leaf *m* as the entry of every finding that names none yet."""
    return [f if f.entry is not None else
            replace(f, entry=m.entry, level=m.level, raw=m.raw, table=m.table) for f in found]


def _check_required(vm: str, page: ExpectedPage, m: Mapping | None) -> list[Finding]:
    """Findings for a required page that :func:`diff` saw disagree with its leaf."""
    if m is None:
        return [Finding("missing", vm, page.gpa, expected=page.hpa, observed=NOT_PRESENT,
                        detail="touched page has no present leaf")]
    detail = f"leaf {m.raw:#x}"
    want = {k: getattr(page, k) for k in "rwx" if getattr(page, k) is not None}
    out = (frame_findings(vm, page.gpa, page.hpa, m.hpa + (page.gpa - m.gpa), detail)
           + permission_findings(vm, page.gpa, m, want, detail))
    if page.memtype is not None and m.memtype != page.memtype:
        out.append(Finding("memtype", vm, page.gpa, expected=page.memtype, observed=m.memtype,
                           detail=f"leaf {m.raw:#x}"))
    return at_leaf(m, out)


def diff(walk: WalkResult, exp: Expectation) -> list[Finding]:
    """Every finding for one VM: structural, per-leaf rule, and required pages.

    The required pages are compared with the leaves in bulk (numpy): only the
    pages that disagree become objects, for :func:`_check_required` to say
    what differs.  Duplicates (same kind and GPA from two rules) are reported
    once.
    """
    leaves = walk.leaves.ascending()
    found = structural_findings(exp.vm, walk)
    if exp.check_leaves is not None:
        found.extend(exp.check_leaves(leaves))
    else:
        # map() and zip(): no loop bookkeeping per leaf; findings are rare, so naming
        # their entry (at_leaf) costs nothing on a clean walk
        mappings = sorted(walk.mappings, key=attrgetter("gpa"))   # a C-level sort key
        for leaf, bad in zip(mappings, map(exp.check, mappings), strict=True):
            if bad:
                found.extend(at_leaf(leaf, bad))
    pages = (exp.required if isinstance(exp.required, ExpectedPages)
             else ExpectedPages.of(exp.required)).ascending()
    for i, li in _disagreeing(leaves, pages):
        found.extend(_check_required(exp.vm, pages.page(i),
                                     leaves.mapping(li) if li >= 0 else None))
    return _dedup(found)


def _disagreeing(leaves: Leaves, pages: ExpectedPages) -> list[tuple[int, int]]:
    """(page row, covering leaf row or -1) of every required page its leaf does not
    satisfy: absent, another frame, other permissions, another memory type."""
    if not len(pages):
        return []
    if not len(leaves):
        return [(i, -1) for i in range(len(pages))]
    gpa = pages.gpa
    li = np.searchsorted(leaves.gpa, gpa, side="right").astype(np.intp) - 1
    at = np.maximum(li, 0)
    lgpa = leaves.gpa[at]
    covered = (li >= 0) & (gpa < lgpa + leaves.size[at])
    ok = covered & (~pages.hpa_known | (leaves.hpa[at] + (gpa - lgpa) == pages.hpa))
    flags = leaves.flags[at]
    for bit, want in ((F_R, pages.r), (F_W, pages.w), (F_X, pages.x)):
        ok &= (want < 0) | (((flags & bit) != 0) == (want == 1))
    ok &= (pages.memtype < 0) | (leaves.memtype[at] == pages.memtype)
    bad = np.flatnonzero(~ok)
    return [(i, li_ if cov else -1) for i, li_, cov in
            zip(bad.tolist(), li[bad].tolist(), covered[bad].tolist(), strict=True)]


def _dedup(findings: Iterable[Finding]) -> list[Finding]:
    seen: set[tuple[str, str, int | None]] = set()
    out = []
    for f in findings:
        key = (f.kind, f.vm, f.gpa)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def coalesce(findings: list[Finding], page: int = 4096) -> list[Finding]:
    """Merge runs of same-kind findings on consecutive pages into one ranged finding.

    Findings merge only when their expected and observed values agree along the run:
    equal, or (addresses) stepping with the GPA.  The merged finding keeps the first
    page's values; the detail gives the number of pages covered.
    """
    keyed = sorted(findings, key=lambda f: (f.vm, f.kind, -1 if f.gpa is None else f.gpa))
    out: list[Finding] = []
    run: list[Finding] = []
    for f in keyed:
        if run and _extends(run[-1], f, page):
            run.append(f)
            continue
        if run:
            out.append(_merge(run, page))
        run = [f]
    if run:
        out.append(_merge(run, page))
    return out


def _extends(prev: Finding, f: Finding, page: int) -> bool:
    if prev.gpa is None or f.gpa is None:
        return False
    step = f.gpa - prev.gpa
    return (prev.vm == f.vm and prev.kind == f.kind and f.gpa == (prev.end or prev.gpa + page)
            and prev.detail.split(" ")[0] == f.detail.split(" ")[0]
            and _steps(prev.expected, f.expected, step) and _steps(prev.observed, f.observed, step))


def _steps(a: object, b: object, step: int) -> bool:
    """Whether value *b* continues value *a* over *step* bytes of GPA."""
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool):
        return b == a + step
    return a == b


def _merge(run: list[Finding], page: int) -> Finding:
    if len(run) == 1:
        return run[0]
    first, last = run[0], run[-1]
    end = last.end or (last.gpa or 0) + page
    pages = (end - (first.gpa or 0)) // page
    return replace(first, detail=f"{first.detail} ({pages} pages)".strip(), end=end)
