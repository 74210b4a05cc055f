"""``slatcheck history``: what the rows of a store say per scenario (pure functions).

The *latest night* is the newest night label in the rows looked at.  For each
scenario: the pass rate of its whole runs (skips left out), its first and last
failing night, the kernel of its last passing run, and the findings of its failing
runs by signature (a negative scenario's expected findings are its success):

* **new**: in the latest night, and never seen in an earlier night with the same
  inputs (scenario, kernel identity, QEMU version, machine);
* **fixed**: seen in an earlier night, not in the latest one, where the scenario ran
  (and did not skip) in the latest night;
* **flaky** (the scenario): with the same inputs, both a passing and a failing
  verdict (single runs and the iterations of repeated runs).

Something new fails in the latest night when a finding is new there, or a scenario
that did not fail in its previous night fails without a finding (a timeout, an
error): ``slatcheck history`` then exits 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.history.store import RunRow

__all__ = ["FindingHistory", "ScenarioHistory", "histories", "latest_night", "new_failing",
           "to_json", "to_text"]


@dataclass(frozen=True)
class FindingHistory:
    """One signature of one scenario over the nights."""

    signature: str
    title: str
    kind: str
    first_night: str
    last_night: str
    nights: int
    new: bool
    fixed: bool


@dataclass(frozen=True)
class ScenarioHistory:
    """What the store says about one scenario."""

    scenario: str
    runs: int
    passed: int
    failed: int
    skipped: int
    first_failure: str | None
    last_failure: str | None
    last_passing_kernel: str | None
    latest: str | None                  # the outcome of its latest whole run
    new_failure: bool                   # fails in the latest night, not before, no finding
    flaky: tuple[str, ...] = ()         # the inputs it both passed and failed with
    findings: tuple[FindingHistory, ...] = field(default=())

    @property
    def pass_rate(self) -> float | None:
        """Passing whole runs over the runs that did not skip (None: none ran)."""
        ran = self.passed + self.failed
        return self.passed / ran if ran else None

    @property
    def new(self) -> tuple[FindingHistory, ...]:
        return tuple(f for f in self.findings if f.new)

    @property
    def fixed(self) -> tuple[FindingHistory, ...]:
        return tuple(f for f in self.findings if f.fixed)


def latest_night(rows: Sequence[RunRow]) -> str | None:
    """The newest night label among *rows*."""
    return max((r.night for r in rows), default=None)


def _flaky(rows: Sequence[RunRow]) -> tuple[str, ...]:
    """Inputs with both a pass and a failure (a repeated run counts by its iterations)."""
    seen: dict[str, set[bool]] = {}
    for r in rows:
        if (r.iteration > 0 or r.iterations == 0) and (r.passed or r.failed):
            seen.setdefault(r.inputs, set()).add(r.passed)
    return tuple(sorted(k for k, v in seen.items() if len(v) == 2))


def _findings(rows: Sequence[RunRow], latest: str, ran_latest: bool
              ) -> tuple[FindingHistory, ...]:
    nights: dict[str, set[str]] = {}
    inputs: dict[str, set[str]] = {}
    first: dict[str, tuple[str, str, str]] = {}
    rows = [r for r in rows if r.failed]      # a negative scenario's expected findings
    for r in rows:                            # are its success, not a finding
        for sig, title, kind in r.findings:
            nights.setdefault(sig, set()).add(r.night)
            first.setdefault(sig, (sig, title, kind))
            if r.night < latest:
                inputs.setdefault(sig, set()).add(r.inputs)
    latest_inputs: dict[str, set[str]] = {}
    for r in rows:
        if r.night == latest:
            for sig, _, _ in r.findings:
                latest_inputs.setdefault(sig, set()).add(r.inputs)
    out = []
    for sig, (_, title, kind) in sorted(first.items(), key=lambda kv: kv[1][1]):
        ns = nights[sig]
        new = bool(latest_inputs.get(sig, set()) - inputs.get(sig, set()))
        fixed = ran_latest and latest not in ns
        out.append(FindingHistory(sig, title, kind, min(ns), max(ns), len(ns), new, fixed))
    return tuple(out)


def _new_failure(whole: Sequence[RunRow], latest: str) -> bool:
    """Fails in the latest night without a finding, and did not fail the night before."""
    now = [r for r in whole if r.night == latest]
    before = [r for r in whole if r.night < latest and not r.outcome == "skipped"]
    if not any(r.failed and not r.findings for r in now):
        return False
    prev_night = max((r.night for r in before), default=None)
    return not any(r.failed for r in before if r.night == prev_night)


def _scenario(name: str, rows: Sequence[RunRow], latest: str) -> ScenarioHistory:
    whole = [r for r in rows if r.iteration == 0]
    fails = [r.night for r in whole if r.failed]
    passing = [r for r in whole if r.passed]
    ran_latest = any(r.night == latest and r.outcome != "skipped" for r in whole)
    return ScenarioHistory(
        scenario=name, runs=len(whole), passed=len(passing), failed=len(fails),
        skipped=sum(r.outcome == "skipped" for r in whole),
        first_failure=min(fails, default=None), last_failure=max(fails, default=None),
        last_passing_kernel=passing[-1].kernel_id if passing else None,
        latest=whole[-1].outcome if whole else None,
        new_failure=_new_failure(whole, latest), flaky=_flaky(rows),
        findings=_findings(rows, latest, ran_latest))


def histories(rows: Sequence[RunRow], scenario: str | None = None) -> list[ScenarioHistory]:
    """One :class:`ScenarioHistory` per scenario in *rows* (oldest first), by name."""
    latest = latest_night(rows)
    if latest is None:
        return []
    by: dict[str, list[RunRow]] = {}
    for r in rows:
        if scenario is None or r.scenario == scenario:
            by.setdefault(r.scenario, []).append(r)
    return [_scenario(name, rs, latest) for name, rs in sorted(by.items())]


def new_failing(hs: Sequence[ScenarioHistory]) -> bool:
    """Whether the latest night has something new failing (the exit status 1)."""
    return any(h.new or h.new_failure for h in hs)


def _percent(rate: float | None) -> str:
    return "no runs" if rate is None else f"{100 * rate:.0f} %"


def to_text(hs: Sequence[ScenarioHistory], latest: str | None) -> str:
    """What ``slatcheck history`` prints."""
    if latest is None:
        return "no runs recorded"
    lines = [f"latest night: {latest}"]
    for h in hs:
        lines.append(f"{h.scenario}: pass rate {_percent(h.pass_rate)} ({h.passed}/"
                     f"{h.passed + h.failed}; {h.skipped} skipped); latest {h.latest}")
        lines.append(f"  failures: first {h.first_failure or '-'}, last "
                     f"{h.last_failure or '-'}; last passing kernel "
                     f"{h.last_passing_kernel or '-'}")
        if h.new_failure:
            lines.append("  NEW failure without a finding in the latest night")
        for f in h.findings:
            mark = "NEW  " if f.new else "FIXED" if f.fixed else "seen "
            lines.append(f"  {mark} {f.signature} {f.title} (first {f.first_night}, last "
                         f"{f.last_night}, {f.nights} night(s))")
        for inp in h.flaky:
            lines.append(f"  FLAKY: passed and failed with the same inputs: {inp}")
    return "\n".join(lines)


def to_json(hs: Sequence[ScenarioHistory], latest: str | None) -> dict[str, Any]:
    """The ``--format json`` form."""
    return {"latest_night": latest, "new_failing": new_failing(hs), "scenarios": [
        {"scenario": h.scenario, "runs": h.runs, "passed": h.passed, "failed": h.failed,
         "skipped": h.skipped, "pass_rate": h.pass_rate, "first_failure": h.first_failure,
         "last_failure": h.last_failure, "last_passing_kernel": h.last_passing_kernel,
         "latest": h.latest, "new_failure": h.new_failure, "flaky": list(h.flaky),
         "new": [f.signature for f in h.new], "fixed": [f.signature for f in h.fixed],
         "findings": [vars(f) for f in h.findings]} for h in hs]}
