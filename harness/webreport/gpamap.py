"""A VM's guest-physical address space as an SVG picture, from its ``slat.json`` entry.

One *lane* per memory slot (and one per cluster of mappings outside every slot),
each on its own linear axis counted in 4 KiB pages, so that a 64 KiB slot and a
1 GiB slot are both drawn across the full width.  Inside a lane, three rows hold
the leaves by size (1G, 2M, 4K) coloured by permission; a mapping outside every
slot is drawn dashed (``unexpected``); each finding with a GPA is a red marker
over its range.  A lane's plot is a nested ``<svg>`` whose ``viewBox`` the page's
script zooms (wheel, drag, buttons) down to a single page; every rectangle has a
``<title>`` with its GPA, size, host address, permissions, level and raw entry.

Pure: dicts in the ``slat.json`` and ``findings.json`` forms in, text out.

>>> vm = {"vm": "w1/vm0", "slots": [{"id": 0, "gpa": "0x0", "size": "0x10000"}],
...       "mappings": [{"gpa": "0x2000", "hpa": "0x202000", "size": "0x1000", "r": True,
...                     "w": True, "x": False, "level": 1, "raw": "0x0000000000202e07"}]}
>>> [(ln.label, len(ln.leaves)) for ln in lanes_of(vm, [])]
[('slot 0: 0x0-0x10000 (64K)', 1)]
>>> vm_svg(vm, [], "vm-0").count('class="page ')
1
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from harness.sizes import format_size

__all__ = ["Leaf", "Mark", "Lane", "lanes_of", "vm_svg", "leaf_table", "perm_of",
           "PAGE", "PERM_COLOURS", "MAX_RECTS"]

PAGE = 0x1000
CLUSTER_GAP = 2 << 20      # mappings outside every slot closer than this share a lane
MAX_RECTS = 4096           # past this many leaves in a VM, contiguous alike leaves share one
ROWS = ("1G", "2M", "4K")  # a lane's rows, top to bottom
WIDTH, LABEL_W, RIGHT, ROW_H, LANE_GAP = 960, 36, 36, 16, 44   # RIGHT: room for the axis

# permission string -> fill colour (also the legend's order)
PERM_COLOURS: dict[str, str] = {
    "r--": "#4e79a7", "rw-": "#59a14f", "r-x": "#f28e2b", "rwx": "#b07aa1",
    "--x": "#edc948", "-w-": "#9c755f", "-wx": "#9c755f", "---": "#bab0ac",
}


@dataclass(frozen=True)
class Leaf:
    """One present leaf: where, how big, what it maps and allows; its row is its size."""

    gpa: int
    size: int
    hpa: int
    perm: str                  # "rwx" with "-" for a missing right
    level: int
    raw: str
    unexpected: bool = False   # outside every memory slot
    count: int = 1             # leaves drawn as this one (contiguous, alike; see MAX_RECTS)

    @property
    def end(self) -> int:
        return self.gpa + self.size * self.count

    @property
    def row(self) -> int:
        """0 for 1 GiB and larger, 1 for 2 MiB up to 1 GiB, 2 for smaller."""
        return 0 if self.size >= 1 << 30 else 1 if self.size >= 2 << 20 else 2


@dataclass(frozen=True)
class Mark:
    """A finding placed in the picture: its range, kind and title."""

    gpa: int
    end: int
    kind: str
    title: str


@dataclass(frozen=True)
class Lane:
    """One linear axis: a slot, or a cluster of what lies outside every slot."""

    label: str
    start: int                 # page-aligned, inclusive
    end: int                   # page-aligned, exclusive
    slot: tuple[int, int] | None   # the slot's own [gpa, end), None outside slots
    leaves: tuple[Leaf, ...]
    marks: tuple[Mark, ...]

    @property
    def pages(self) -> int:
        return max(1, (self.end - self.start) // PAGE)


def _int(v: Any) -> int:
    return v if isinstance(v, int) else int(str(v), 16)


def perm_of(m: dict[str, Any]) -> str:
    """``rw-`` from a mapping's ``r``, ``w``, ``x``."""
    return "".join(c if m.get(c) else "-" for c in "rwx")


def _slots(vm: dict[str, Any]) -> list[tuple[int, int, str]]:
    out = []
    for i, s in enumerate(vm.get("slots") or []):
        gpa, size = _int(s["gpa"]), _int(s["size"])
        flags = _flags(s.get("flags"))
        extra = " ".join(x for x in (str(s.get("kind", "")), flags) if x)
        label = (f"slot {s.get('id', i)}: {gpa:#x}-{gpa + size:#x} ({format_size(size)})"
                 + (f" {extra}" if extra else ""))
        out.append((gpa, gpa + size, label))
    return sorted(out)


def _flags(v: Any) -> str:
    """A slot's flags as its label shows them: ``log ro``, ``flags 0x2``, or nothing.

    >>> _flags(["log", "ro"]), _flags(2), _flags(0), _flags("huge")
    ('log ro', 'flags 0x2', '', 'huge')
    """
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    if isinstance(v, int):
        return f"flags {v:#x}" if v else ""
    return str(v or "")


def _leaves(vm: dict[str, Any], slots: Sequence[tuple[int, int, str]]) -> list[Leaf]:
    out = []
    for m in vm.get("mappings") or []:
        gpa, size = _int(m["gpa"]), _int(m["size"])
        inside = any(gpa < hi and lo < gpa + size for lo, hi, _ in slots)
        out.append(Leaf(gpa, size, _int(m.get("hpa", 0)), perm_of(m), int(m.get("level", 0)),
                        str(m.get("raw", "")), unexpected=bool(slots) and not inside))
    return sorted(out, key=lambda leaf: leaf.gpa)


def _marks(vm: dict[str, Any], findings: Iterable[dict[str, Any]]) -> list[Mark]:
    out = []
    for f in findings:
        if f.get("vm") != vm.get("vm") or f.get("gpa") is None:
            continue
        gpa = _int(f["gpa"])
        end = _int(f["end"]) if f.get("end") is not None else gpa + PAGE
        title = str(f.get("title") or f"{f.get('kind')} at {gpa:#x}")
        out.append(Mark(gpa, max(end, gpa + 1), str(f.get("kind", "")), title))
    return out


def _clusters(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges closer than :data:`CLUSTER_GAP` merged, page-aligned."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        lo, hi = lo & ~(PAGE - 1), -(-hi // PAGE) * PAGE
        if out and lo - out[-1][1] <= CLUSTER_GAP:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def lanes_of(vm: dict[str, Any], findings: Iterable[dict[str, Any]]) -> list[Lane]:
    """The lanes of *vm* (a ``slat.json`` VM): its slots, then clusters outside them.

    A leaf goes to the first slot it overlaps, a marker to the first lane holding
    its GPA; what is left over is clustered into lanes of its own.
    """
    slots = _slots(vm)
    leaves, marks = _leaves(vm, slots), _marks(vm, findings)
    lanes: list[Lane] = []
    placed_leaves: set[int] = set()
    placed_marks: set[int] = set()
    for lo, hi, label in slots:
        mine = [i for i, lf in enumerate(leaves) if i not in placed_leaves
                and lf.gpa < hi and lo < lf.end]
        placed_leaves.update(mine)
        start = min([lo] + [leaves[i].gpa for i in mine])
        end = max([hi] + [leaves[i].end for i in mine])
        lanes.append(Lane(label, start & ~(PAGE - 1), -(-end // PAGE) * PAGE, (lo, hi),
                          tuple(leaves[i] for i in mine), ()))
    rest = [lf for i, lf in enumerate(leaves) if i not in placed_leaves]
    outside = "outside every slot" if slots else "mappings (no memory slots recorded)"
    for lo, hi in _clusters([(lf.gpa, lf.end) for lf in rest]
                            + [(m.gpa, m.end) for m in marks
                               if not any(ln.start <= m.gpa < ln.end for ln in lanes)]):
        lanes.append(Lane(f"{outside}: {lo:#x}-{hi:#x}", lo, hi, None,
                          tuple(lf for lf in rest if lo <= lf.gpa < hi), ()))
    out = []
    for ln in lanes:
        mine_m = [j for j, m in enumerate(marks) if j not in placed_marks
                  and ln.start <= m.gpa < ln.end]
        placed_marks.update(mine_m)
        out.append(Lane(ln.label, ln.start, ln.end, ln.slot, ln.leaves,
                        tuple(marks[j] for j in mine_m)))
    return out


def _coalesced(leaves: Sequence[Leaf]) -> list[Leaf]:
    """Contiguous leaves of one size, permission and kind as one (for huge VMs)."""
    out: list[Leaf] = []
    for lf in leaves:
        last = out[-1] if out else None
        if (last is not None and last.end == lf.gpa and last.size == lf.size
                and last.perm == lf.perm and last.unexpected == lf.unexpected):
            out[-1] = Leaf(last.gpa, last.size, last.hpa, last.perm, last.level, last.raw,
                           last.unexpected, last.count + 1)
        else:
            out.append(lf)
    return out


def _num(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def _leaf_rect(ln: Lane, lf: Leaf) -> str:
    x = (lf.gpa - ln.start) / PAGE
    w = lf.size * lf.count / PAGE
    cls = f"page p{lf.perm.replace('-', '_')}" + (" unexpected" if lf.unexpected else "")
    many = f" x{lf.count} (contiguous)" if lf.count > 1 else ""
    title = (f"GPA {lf.gpa:#x}-{lf.end:#x} {format_size(lf.size)}{many} -> {lf.hpa:#x} "
             f"{lf.perm} level {lf.level} raw {lf.raw}"
             + (" UNEXPECTED: outside every slot" if lf.unexpected else ""))
    return (f'<rect class="{cls}" x="{_num(x)}" y="{lf.row}" width="{_num(w)}" height="1" '
            f'fill="{PERM_COLOURS.get(lf.perm, "#9c755f")}" data-gpa="{lf.gpa:#x}" '
            f'data-n="{lf.count}"><title>{escape(title)}</title></rect>')


def _mark_rect(ln: Lane, m: Mark) -> str:
    x = (m.gpa - ln.start) / PAGE
    w = max(m.end - m.gpa, PAGE) / PAGE
    return (f'<rect class="mark" x="{_num(x)}" y="0" width="{_num(w)}" height="{len(ROWS)}" '
            f'data-gpa="{m.gpa:#x}" data-kind="{escape(m.kind)}">'
            f'<title>{escape(m.title)}</title></rect>')


def _lane_svg(ln: Lane, lane_id: str, y: int, cap: bool) -> str:
    plot_w = WIDTH - LABEL_W - RIGHT
    h = ROW_H * len(ROWS)
    parts = [f'<g class="lane" id="{lane_id}" transform="translate(0,{y})">',
             f'<text class="lane-label" x="0" y="-14">{escape(ln.label)}</text>',
             f'<text class="lane-range" x="{WIDTH - RIGHT}" y="-14" text-anchor="end" '
             f'data-start="{ln.start}" data-pages="{ln.pages}">'
             f'{ln.start:#x} .. {ln.end:#x}</text>']
    parts += [f'<text class="row-label" x="0" y="{ROW_H * i + 12}">{r}</text>'
              for i, r in enumerate(ROWS)]
    parts.append(f'<svg class="plot" x="{LABEL_W}" y="0" width="{plot_w}" height="{h}" '
                 f'viewBox="0 0 {ln.pages} {len(ROWS)}" preserveAspectRatio="none" '
                 f'data-pages="{ln.pages}" data-start="{ln.start}">')
    parts.append(f'<rect class="lane-bg" x="0" y="0" width="{ln.pages}" height="{len(ROWS)}"/>')
    if ln.slot is not None:
        lo, hi = ln.slot
        parts.append(f'<rect class="slot" x="{_num((lo - ln.start) / PAGE)}" y="0" '
                     f'width="{_num((hi - lo) / PAGE)}" height="{len(ROWS)}"/>')
    leaves = _coalesced(ln.leaves) if cap else list(ln.leaves)
    parts += [_leaf_rect(ln, lf) for lf in leaves]
    parts += [_mark_rect(ln, m) for m in ln.marks]
    parts.append('</svg><g class="ticks"></g></g>')
    return "\n".join(parts)


def vm_svg(vm: dict[str, Any], findings: Iterable[dict[str, Any]], svg_id: str) -> str:
    """The picture of *vm*: an ``<svg>`` with one lane per slot or outside cluster.

    Its ``data-leaves`` and ``data-marks`` attributes count the leaves and
    finding markers drawn (the browser test compares them with the rectangles).
    """
    lanes = lanes_of(vm, list(findings))
    n_leaves = sum(len(ln.leaves) for ln in lanes)
    cap = n_leaves > MAX_RECTS
    step = ROW_H * len(ROWS) + LANE_GAP
    height = max(1, len(lanes)) * step + 8
    body = [_lane_svg(ln, f"{svg_id}-lane{i}", LANE_GAP - 6 + i * step, cap)
            for i, ln in enumerate(lanes)]
    if not lanes:
        body.append('<text x="0" y="20">no mappings and no memory slots</text>')
    return (f'<svg class="gpamap" id="{svg_id}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
            f'aria-label="GPA space of {escape(str(vm.get("vm", "")))}" '
            f'data-leaves="{n_leaves}" data-marks="{sum(len(ln.marks) for ln in lanes)}" '
            f'data-coalesced="{str(cap).lower()}">\n' + "\n".join(body) + "\n</svg>")


def leaf_table(vm: dict[str, Any], limit: int = 2000) -> str:
    """Every leaf of *vm* as table rows, page by page (at most *limit*; slat.json has all)."""
    rows = []
    maps = vm.get("mappings") or []
    for m in maps[:limit]:
        cells = [m.get("gpa"), m.get("size"), m.get("hpa"), perm_of(m), m.get("level"),
                 m.get("memtype"), m.get("accessed"), m.get("dirty"), m.get("entry"),
                 m.get("raw")]
        rows.append("<tr>" + "".join(f"<td>{escape(_cell(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("GPA", "size", "HPA", "perm", "level", "memtype",
                                              "A", "D", "entry", "raw"))
    more = (f'<p class="note">{len(maps) - limit} more leaves in slat.json</p>'
            if len(maps) > limit else "")
    return f'<table class="leaves"><tr>{head}</tr>\n' + "\n".join(rows) + "</table>" + more


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)
