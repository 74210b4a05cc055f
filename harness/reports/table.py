"""The summary table: one row per scenario (verdict, outcome, time), then the counts.

``slatcheck run`` prints it at the end; the text and mail reports start with it.
Given the baseline's results by scenario name, a last column shows each scenario's
outcome there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from harness.result import ScenarioResult

__all__ = ["summary_table"]


def summary_table(results: Sequence[ScenarioResult],
                  baseline: Mapping[str, ScenarioResult] | None = None,
                  times: bool = True) -> str:
    """The table; with *baseline*, a ``baseline`` column (``-`` where it did not run);
    without *times*, no time column (a mail's narrow lines)."""
    width = max([len(r.name) for r in results] + [8])
    head = f"{'scenario':<{width}}  {'verdict':<14} {'outcome':<8}"
    rows = [head + (f" {'time':>8}" if times else "")
            + ("  baseline" if baseline is not None else "")]
    for r in results:
        row = f"{r.name:<{width}}  {r.verdict:<14} {r.outcome:<8}"
        row += f" {r.duration:7.1f}s" if times else ""
        if baseline is not None:
            base = baseline.get(r.name)
            row += f"  {base.outcome if base else '-'}"
        rows.append(row + (f"  {r.repeat['text']}" if r.repeat else ""))
    counts = Counter(r.outcome for r in results)
    rows.append(", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                + f"; {sum(r.duration for r in results):.1f} s in all")
    return "\n".join(rows)
