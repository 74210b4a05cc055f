"""The trend view: pass rate and duration per scenario over nights, from history rows.

A :class:`HistoryRow` is one scenario run of one night (a night may run a scenario
more than once: shards, repeats).  :func:`cells` sums them per scenario and
night; :func:`trend_html` draws a grid (one coloured square per scenario and
night, its title the counts), a duration sparkline per scenario and the whole
suite's pass rate per night, as inline SVG.  Pure.

A run passes when its ``outcome`` is ``passed`` or ``xfailed`` (a negative scenario
that failed as it expects); a row without an outcome passes on verdict ``pass``.
Skipped runs count in neither the passes nor the runs of the rate.

>>> rows = [HistoryRow("2026-11-30", "smoke", "pass", 10.0),
...         HistoryRow("2026-11-30", "smoke", "fail", 12.0),
...         HistoryRow("2026-12-01", "smoke", "pass", 9.0)]
>>> c = cells(rows)[("smoke", "2026-11-30")]
>>> c.passed, c.runs, c.rate, c.duration
(1, 2, 0.5, 11.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["HistoryRow", "Cell", "cells", "passed", "trend_html"]

GOOD_OUTCOMES = ("passed", "xfailed")


@dataclass(frozen=True)
class HistoryRow:
    """One scenario run of one night, as the history keeps it."""

    night: str                 # the night's date, ISO (2026-12-01): sorts as text
    scenario: str
    verdict: str               # pass, fail, error, skip, panic, timeout ...
    duration: float            # seconds
    outcome: str | None = None  # passed, xfailed, skipped, failed (None: judge by verdict)


def passed(row: HistoryRow) -> bool | None:
    """Whether *row* passed; None when it was skipped (counts in no rate)."""
    if row.verdict == "skip" or row.outcome == "skipped":
        return None
    return row.outcome in GOOD_OUTCOMES if row.outcome else row.verdict == "pass"


@dataclass
class Cell:
    """One scenario's runs of one night."""

    passed: int = 0
    runs: int = 0              # runs that count in the rate (not skipped)
    skipped: int = 0
    durations: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        return self.passed / self.runs if self.runs else None

    @property
    def duration(self) -> float:
        """Mean duration in seconds of every run (skipped ones too)."""
        return sum(self.durations) / len(self.durations) if self.durations else 0.0


def cells(rows: Iterable[HistoryRow]) -> dict[tuple[str, str], Cell]:
    """(scenario, night) -> the night's counts of that scenario."""
    out: dict[tuple[str, str], Cell] = {}
    for r in rows:
        c = out.setdefault((r.scenario, r.night), Cell())
        ok = passed(r)
        c.durations.append(r.duration)
        if ok is None:
            c.skipped += 1
        else:
            c.runs += 1
            c.passed += ok
    return out


def _colour(c: Cell | None) -> tuple[str, str]:
    """(css class, text) of a grid square."""
    if c is None:
        return "none", ""
    if c.rate is None:
        return "skip", "s"
    if c.rate == 1:
        return "ok", ""
    return ("bad", "") if c.rate == 0 else ("mixed", "")


def _square(scenario: str, night: str, c: Cell | None) -> str:
    cls, text = _colour(c)
    if c is None:
        tip = f"{night}: not run"
    else:
        tip = (f"{night}: {c.passed}/{c.runs} passed"
               + (f", {c.skipped} skipped" if c.skipped else "") + f", {c.duration:.1f} s")
    return (f'<td class="sq {cls}" data-night="{escape(night)}" '
            f'title="{escape(scenario)} {escape(tip)}">{text}</td>')


def _sparkline(values: Sequence[float | None], cls: str, top: float | None = None) -> str:
    """A small inline SVG polyline of *values* (None: a gap), 0 at the bottom."""
    w, h = 120, 24
    top = top or max([v for v in values if v is not None] + [1e-9])
    n = max(len(values) - 1, 1)
    pts = [f"{i * w / n:.1f},{h - 2 - (v / top) * (h - 4):.1f}"
           for i, v in enumerate(values) if v is not None]
    dots = "".join(f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="1.5"/>'
                   for p in pts)
    return (f'<svg class="spark {cls}" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<polyline points="{" ".join(pts)}"/>{dots}</svg>')


def trend_html(rows: Sequence[HistoryRow], last: int = 30) -> str:
    """The trend section: the last *last* nights, one row per scenario."""
    if not rows:
        return '<p class="note">no history yet</p>'
    table = cells(rows)
    nights = sorted({r.night for r in rows})[-last:]
    scenarios = sorted({r.scenario for r in rows})
    head = "".join(f'<th class="night" title="{escape(n)}">{escape(n[-5:])}</th>'
                   for n in nights)
    out = ['<table class="trend"><tr><th>scenario</th>' + head
           + "<th>duration</th><th>pass rate</th></tr>"]
    for s in scenarios:
        row = [table.get((s, n)) for n in nights]
        durations = [c.duration if c else None for c in row]
        counted = [c for c in row if c and c.runs]
        rate = sum(c.passed for c in counted) / max(1, sum(c.runs for c in counted))
        out.append(f'<tr class="trend-row" data-scenario="{escape(s)}"><th>{escape(s)}</th>'
                   + "".join(_square(s, n, c) for n, c in zip(nights, row, strict=True))
                   + f"<td>{_sparkline(durations, 'duration')} {_last(durations)}</td>"
                   + f'<td class="rate">{100 * rate:.0f} %</td></tr>')
    out.append("</table>")
    return "\n".join(out) + _suite_rate(table, nights)


def _last(durations: Sequence[float | None]) -> str:
    """The latest night's mean duration, as the sparkline's reading."""
    known = [d for d in durations if d is not None]
    return f'<span class="last">{known[-1]:.1f} s</span>' if known else ""


def _suite_rate(table: dict[tuple[str, str], Cell], nights: Sequence[str]) -> str:
    """The whole suite's pass rate per night, as a sparkline with its first and last."""
    rates: list[float | None] = []
    for n in nights:
        cs = [c for (_, night), c in table.items() if night == n and c.runs]
        rates.append(sum(c.passed for c in cs) / sum(c.runs for c in cs) if cs else None)
    known = [(n, r) for n, r in zip(nights, rates, strict=True) if r is not None]
    if not known:
        return ""
    (n0, r0), (n1, r1) = known[0], known[-1]
    return (f'<p class="suite-rate">suite pass rate per night '
            f'{_sparkline(rates, "rate", top=1.0)} {100 * r1:.0f} % on {escape(n1)} '
            f'(from {100 * r0:.0f} % on {escape(n0)})</p>')
