"""Observed tables versus the reference model: findings, then ranges of findings."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import replace
from operator import attrgetter

from harness.findings import NOT_PRESENT, Finding
from harness.formats.base import Mapping, WalkResult
from harness.formats.radix import level_shift
from harness.models.base import Expectation, ExpectedPage, frame_findings, permission_findings

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

    Duplicates (same kind and GPA from two rules) are reported once.
    """
    by_gpa = attrgetter("gpa")      # a C-level sort key: no Python call per leaf or page
    mappings = sorted(walk.mappings, key=by_gpa)
    found = structural_findings(exp.vm, walk)
    # map() and zip(): no loop bookkeeping per leaf; findings are rare, so naming their
    # entry (at_leaf) costs nothing on a clean walk
    for leaf, bad in zip(mappings, map(exp.check, mappings), strict=True):
        if bad:
            found.extend(at_leaf(leaf, bad))
    # One merge pass over pages and mappings, both sorted by gpa.  The agreement test is
    # written out here (not a helper): this loop runs once per required page, and a
    # function call per page was most of diff's time.  Only disagreeing pages go on to
    # _check_required, which says what differs.
    i, n = 0, len(mappings)
    for page in sorted(exp.required, key=by_gpa):
        gpa = page.gpa
        while i < n and mappings[i].gpa + mappings[i].size <= gpa:
            i += 1
        m = mappings[i] if i < n and mappings[i].gpa <= gpa else None
        if (m is not None
                and (page.hpa is None or m.hpa + (gpa - m.gpa) == page.hpa)
                and (page.r is None or page.r == m.r)
                and (page.w is None or page.w == m.w)
                and (page.x is None or page.x == m.x)
                and (page.memtype is None or page.memtype == m.memtype)):
            continue
        found.extend(_check_required(exp.vm, page, m))
    return _dedup(found)


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
