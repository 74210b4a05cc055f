"""The ``tap`` report: TAP version 13, the way the kernel's kselftests write it.

One test point per scenario; a scenario that came out as it expects is ``ok``
(a negative scenario that failed with its expected findings too), a skipped one
``ok ... # SKIP reason``, any other ``not ok`` followed by a YAML diagnostics
block (``  ---`` ... ``  ...``) with the verdict, the failing step, the findings
and the command that reproduces it.

>>> from pathlib import Path
>>> from harness.result import ScenarioResult
>>> print(render_tap([ScenarioResult("a", Path("a.yaml"), verdict="pass"),
...                   ScenarioResult("b", Path("b.yaml"), verdict="skip", message="no SVM")]))
TAP version 13
1..2
ok 1 a
ok 2 b # SKIP no SVM
<BLANKLINE>
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from harness.reports.options import ReportOptions
from harness.reports.text import reproduce
from harness.result import ScenarioResult, matches_expectation
from harness.signature import signature

__all__ = ["render_tap"]


def _escape(text: str) -> str:
    """A description or reason on one line, with TAP's ``#`` escaped."""
    return " ".join(text.split()).replace("\\", "\\\\").replace("#", "\\#")


class _YAMLish(yaml.SafeDumper):
    """YAML as TAP's YAMLish readers take it (TAP::Parser's among them): a multi-line
    string is one double-quoted scalar with ``\\n`` escapes, never folded over lines, and
    a list is indented under its key."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                   style='"' if "\n" in data else None)


_YAMLish.add_representer(str, _str)


def _diagnostics(res: ScenarioResult, base: ScenarioResult | None) -> dict[str, Any]:
    """What a ``not ok`` point's YAML block holds."""
    out: dict[str, Any] = {"verdict": res.verdict, "message": res.message,
                           "why": matches_expectation(res)[1]}
    if res.failed_step:
        out["failed_step"] = res.failed_step
    if base is not None:
        out["baseline"] = base.outcome
    if res.findings:
        out["findings"] = [
            {"title": signature(res.name, res.hypervisor, f).title,
             "signature": signature(res.name, res.hypervisor, f).id}
            | {k: v for k, v in f.to_json().items()
               if k in ("gpa", "expected", "observed", "entry", "raw") and v is not None}
            for f in res.findings]
    if reproduce(res):
        out["reproduce"] = reproduce(res)
    if res.artifacts:
        out["artifacts"] = str(res.artifacts)
    return out


def _point(n: int, res: ScenarioResult, base: ScenarioResult | None) -> list[str]:
    name = _escape(res.name)
    if res.outcome == "skipped":
        return [f"ok {n} {name} # SKIP {_escape(res.message) or 'skipped'}"]
    if res.outcome != "failed":
        return [f"ok {n} {name}"]
    block = yaml.dump(_diagnostics(res, base), Dumper=_YAMLish, sort_keys=False,
                      width=1 << 16, allow_unicode=True)
    return [f"not ok {n} {name}", "  ---",
            *(f"  {line}" for line in block.splitlines()), "  ..."]


def render_tap(results: Sequence[ScenarioResult], options: ReportOptions | None = None
               ) -> str:
    """The TAP stream of *results* (see the module's docstring)."""
    baseline = (options or ReportOptions()).baseline or {}
    lines = ["TAP version 13", f"1..{len(results)}"]
    for n, res in enumerate(results, 1):
        lines += _point(n, res, baseline.get(res.name))
    return "\n".join(lines) + "\n"
