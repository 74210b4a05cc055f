"""The ``text`` report: the summary table, each failing scenario's findings and the
command that reproduces it, and where the runs came from.

>>> from pathlib import Path
>>> from harness.result import ScenarioResult
>>> print(render_text([ScenarioResult("a", Path("a.yaml"), verdict="pass")]))
scenario  verdict        outcome      time
a         pass           passed       0.0s
1 passed; 0.0 s in all
<BLANKLINE>
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from harness.reports.options import ReportOptions
from harness.reports.origin import origin_lines, origins
from harness.reports.table import summary_table
from harness.result import ScenarioResult

__all__ = ["render_text", "reproduce", "failing"]


def reproduce(res: ScenarioResult) -> list[str]:
    """The command line the run was made with (``provenance.command``), or []."""
    command = res.provenance.get("command") or []
    return [str(w) for w in command] if isinstance(command, list) else shlex.split(command)


def failing(results: Sequence[ScenarioResult]) -> list[ScenarioResult]:
    """The results that did not come out as their scenario expects."""
    return [r for r in results if r.outcome == "failed"]


def _failure(res: ScenarioResult) -> str:
    lines = [res.summary(max_findings=50)]
    command = reproduce(res)
    if command:
        lines.append(f"  reproduce: {shlex.join(command)}")
    return "\n".join(lines)


def render_text(results: Sequence[ScenarioResult], options: ReportOptions | None = None
                ) -> str:
    """The text report (see the module's docstring)."""
    options = options or ReportOptions()
    parts = [summary_table(results, options.baseline)]
    parts += [_failure(r) for r in failing(results)]
    where = origin_lines(origins(results))
    if where:
        parts.append("tested on:\n" + "\n".join(f"  {line}" for line in where))
    return "\n\n".join(parts) + "\n"
