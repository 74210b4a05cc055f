"""Reporters: the run's results written in one format each, in :data:`REPORTERS`.

``junit`` (for CI systems, through junit-xml), ``json`` (``summary.json``:
counts per verdict and outcome, one row per scenario) and ``html`` (a
self-contained page to look at: :mod:`harness.webreport`); text, mail and TAP
reporters plug in the same way.

>>> REPORTERS.names()
['html', 'json', 'junit']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.artifacts import write_json
from harness.junit import write_junit
from harness.registry import Registry
from harness.result import ScenarioResult
from harness.webreport import write_html

__all__ = ["Reporter", "REPORTERS", "summary", "write_summary", "summary_table"]


@dataclass(frozen=True)
class Reporter:
    """One output format for a list of scenario results."""

    name: str
    description: str
    write: Callable[[Sequence[ScenarioResult], Path], None]


def summary(results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Counts per verdict and per outcome, and one row per scenario."""
    return {
        "verdicts": dict(Counter(r.verdict for r in results)),
        "outcomes": dict(Counter(r.outcome for r in results)),
        "exit_status": max((r.status for r in results), default=0),
        "duration": round(sum(r.duration for r in results), 3),
        "scenarios": [{"scenario": r.name, "file": str(r.path), "verdict": r.verdict,
                       "outcome": r.outcome, "duration": round(r.duration, 3),
                       "failed_step": r.failed_step, "findings": len(r.findings),
                       "artifacts": str(r.artifacts) if r.artifacts else None}
                      | ({"repeat": r.repeat["rate"]} if r.repeat else {})
                      for r in results],
    }


def write_summary(results: Sequence[ScenarioResult], path: Path,
                  shard: dict[str, Any] | None = None) -> None:
    """``summary.json``, written atomically (nothing left behind if it cannot be).

    *shard*: a shard's place (``index``, ``total``, and each row's ``positions`` in the
    unsharded order), for ``slatcheck merge``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, summary(results) | ({"shard": shard} if shard else {}))


def summary_table(results: Sequence[ScenarioResult]) -> str:
    """The table the CLI prints at the end: one row per scenario, then the counts."""
    width = max([len(r.name) for r in results] + [8])
    rows = [f"{'scenario':<{width}}  {'verdict':<14} {'outcome':<8} {'time':>8}"]
    for r in results:
        rows.append(f"{r.name:<{width}}  {r.verdict:<14} {r.outcome:<8} {r.duration:7.1f}s"
                    + (f"  {r.repeat['text']}" if r.repeat else ""))
    counts = Counter(r.outcome for r in results)
    rows.append(", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                + f"; {sum(r.duration for r in results):.1f} s in all")
    return "\n".join(rows)


def _write_html(results: Sequence[ScenarioResult], path: Path) -> None:
    write_html(results, path)


REPORTERS: Registry[Reporter] = Registry("reporter")
REPORTERS.add("junit", Reporter("junit", "JUnit XML (one test case per scenario)",
                                lambda rs, p: write_junit(list(rs), p)))
REPORTERS.add("json", Reporter("json", "summary.json: verdicts, outcomes, one row per scenario",
                               write_summary))
REPORTERS.add("html", Reporter("html", "index.html to look at: verdicts, findings, provenance, "
                               "artifact links, each VM's GPA space (PATH: a directory "
                               "or a .html file)",
                               _write_html))
