"""Reporters: the run's results written in one format each, in :data:`REPORTERS`.

``junit`` (for CI systems, through junit-xml), ``json`` (``summary.json``: counts per
verdict and outcome, one row per scenario), ``html`` (a self-contained page to look at:
:mod:`harness.webreport`), and the report modules of :mod:`harness.reports`: ``text``,
``tap`` and ``mail``.  A reporter that can :attr:`~Reporter.render` to a string also
prints to stdout (``slatcheck report``) and takes
:class:`~harness.reports.options.ReportOptions` (the baseline's results, the mail's
headers).

>>> REPORTERS.names()
['html', 'json', 'junit', 'mail', 'tap', 'text']
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.artifacts import write_json, write_text
from harness.junit import junit_text, write_junit
from harness.registry import Registry
from harness.reports.mail import check_sender, render_mail
from harness.reports.options import ReportOptions
from harness.reports.table import summary_table
from harness.reports.tap import render_tap
from harness.reports.text import render_text
from harness.result import ScenarioResult
from harness.webreport import write_html

__all__ = ["Reporter", "REPORTERS", "summary", "write_summary", "summary_table",
           "Render"]

Render = Callable[[Sequence[ScenarioResult], ReportOptions], str]


@dataclass(frozen=True)
class Reporter:
    """One output format for a list of scenario results."""

    name: str
    description: str
    write: Callable[[Sequence[ScenarioResult], Path], None]
    render: Render | None = None     # the report as text, given the options (None: a file
                                     # format only)
    check: Callable[[], None] | None = None   # raises ScenarioError when it cannot be
                                              # written here (run --report: before booting)


def summary(results: Sequence[ScenarioResult],
            baseline: dict[str, ScenarioResult] | None = None) -> dict[str, Any]:
    """Counts per verdict and per outcome, and one row per scenario (with the baseline's
    outcome when given)."""
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
                      | ({"baseline": _outcome(baseline.get(r.name))}
                         if baseline is not None else {})
                      for r in results],
    }


def _outcome(res: ScenarioResult | None) -> str | None:
    return None if res is None else res.outcome


def write_summary(results: Sequence[ScenarioResult], path: Path,
                  shard: dict[str, Any] | None = None) -> None:
    """``summary.json``, written atomically (nothing left behind if it cannot be).

    *shard*: a shard's place (``index``, ``total``, and each row's ``positions`` in the
    unsharded order), for ``slatcheck merge``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, summary(results) | ({"shard": shard} if shard else {}))


def _json(results: Sequence[ScenarioResult], options: ReportOptions) -> str:
    baseline = dict(options.baseline) if options.baseline is not None else None
    return json.dumps(summary(results, baseline), indent=2) + "\n"


def _file(render: Render) -> Callable[[Sequence[ScenarioResult], Path], None]:
    """A writer for ``run --report NAME=PATH``: *render* with no options, atomically."""
    def write(results: Sequence[ScenarioResult], path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, render(results, ReportOptions()))
    return write


def _write_html(results: Sequence[ScenarioResult], path: Path) -> None:
    write_html(results, path)


REPORTERS: Registry[Reporter] = Registry("reporter")
REPORTERS.add("junit", Reporter("junit", "JUnit XML (one test case per scenario)",
                                lambda rs, p: write_junit(list(rs), p),
                                lambda rs, o: junit_text(list(rs))))
REPORTERS.add("json", Reporter("json", "summary.json: verdicts, outcomes, one row per scenario",
                               write_summary, _json))
REPORTERS.add("html", Reporter("html", "index.html to look at: verdicts, findings, provenance, "
                               "artifact links, each VM's GPA space (PATH: a directory "
                               "or a .html file)",
                               _write_html))
for _name, _what, _render in (
        ("text", "the summary table, each failing scenario's findings and reproducer",
         render_text),
        ("tap", "TAP version 13 (as kselftest writes it): ok / not ok / # SKIP, YAML "
                "diagnostics", render_tap),
        ("mail", "a reply to a patch (RFC 5322): Tested-on, results, findings, Tested-by",
         render_mail)):
    REPORTERS.add(_name, Reporter(_name, _what, _file(_render), _render,
                                  check_sender if _name == "mail" else None))
