"""Two recorded runs of the same scenarios compared: the baseline and the new one.

``slatcheck compare BASE NEW`` (each an artifacts root or a run directory) says
which scenarios changed verdict, which findings are new, gone or still there (by
their :mod:`signature <harness.signature>`), how each VM's second-level mappings
differ (:mod:`harness.statediff`: page sizes, permissions, memory types, mapped
ranges; never host addresses), and where each side came from.  Something
*regressed* when a scenario's outcome is worse than the baseline's (a higher exit
status; a scenario only in the new run counts against a clean baseline) or a
finding is new: exit status 1, else 0.

:func:`load_side` reads a side (a :class:`~harness.errors.ScenarioError` naming the
file on bad input); :func:`compare` is pure; :func:`render_text` and
:meth:`Comparison.to_json` are its two renderings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ScenarioError
from harness.reports.origin import Origin, origin_lines, origins
from harness.result import ScenarioResult
from harness.rundir import load_results, load_slat
from harness.signature import Signature, signature
from harness.statediff import StateChange, state_changes, vm_mappings

__all__ = ["Recorded", "VerdictChange", "Comparison", "load_side", "compare", "render_text"]

Mappings = dict[str, list[dict[str, Any]]]


@dataclass(frozen=True)
class Recorded:
    """One recorded run: its result and each VM's mapping rows (None: nothing checked)."""

    result: ScenarioResult
    mappings: Mappings | None


@dataclass(frozen=True)
class VerdictChange:
    """One scenario's outcome on both sides (None: not run on that side)."""

    scenario: str
    base: ScenarioResult | None
    new: ScenarioResult | None

    @property
    def changed(self) -> bool:
        """The outcome or the verdict differs (or the scenario ran on one side only)."""
        return _said(self.base) != _said(self.new)

    @property
    def regressed(self) -> bool:
        """The new outcome is worse: a higher exit status than the baseline's."""
        if self.new is None:
            return False
        return self.new.status > (self.base.status if self.base is not None else 0)

    def text(self) -> str:
        """``rec-x: passed (pass) -> failed (fail)``."""
        return f"{self.scenario}: {_said(self.base)} -> {_said(self.new)}" + \
            ("  REGRESSED" if self.regressed else "")

    def to_json(self) -> dict[str, Any]:
        """The ``--format json`` form."""
        def side(r: ScenarioResult | None) -> dict[str, str] | None:
            return None if r is None else {"verdict": r.verdict, "outcome": r.outcome}
        return {"scenario": self.scenario, "base": side(self.base), "new": side(self.new),
                "changed": self.changed, "regressed": self.regressed}


def _said(r: ScenarioResult | None) -> str:
    return "not run" if r is None else f"{r.outcome} ({r.verdict})"


@dataclass(frozen=True)
class Comparison:
    """Everything ``slatcheck compare`` reports."""

    base_path: str
    new_path: str
    base_origins: tuple[Origin, ...]
    new_origins: tuple[Origin, ...]
    scenarios: tuple[VerdictChange, ...]
    new_findings: tuple[Signature, ...]
    gone_findings: tuple[Signature, ...]
    kept_findings: tuple[Signature, ...]
    state: tuple[StateChange, ...]

    @property
    def regressions(self) -> list[str]:
        """What regressed, one line each (empty: nothing)."""
        return [f"worse: {v.text().removesuffix('  REGRESSED')}"
                for v in self.scenarios if v.regressed] + \
            [f"new finding {s.id}: {s.title}" for s in self.new_findings]

    @property
    def exit_status(self) -> int:
        """1 when something regressed, else 0."""
        return 1 if self.regressions else 0

    def to_json(self) -> dict[str, Any]:
        """The ``--format json`` form."""
        return {"base": {"path": self.base_path,
                         "origins": [o.to_json() for o in self.base_origins]},
                "new": {"path": self.new_path,
                        "origins": [o.to_json() for o in self.new_origins]},
                "scenarios": [v.to_json() for v in self.scenarios],
                "findings": {"new": [s.to_json() for s in self.new_findings],
                             "gone": [s.to_json() for s in self.gone_findings],
                             "still": [s.to_json() for s in self.kept_findings]},
                "state": [c.to_json() for c in self.state],
                "regressions": self.regressions, "exit_status": self.exit_status}


def _mappings(res: ScenarioResult) -> Mappings | None:
    """The VMs' mapping rows of a run's ``slat.json``; None when it has none or never
    checked."""
    if res.artifacts is None:
        return None
    slat = load_slat(res.artifacts)
    if slat is None or not slat.get("checks"):
        return None
    try:
        return vm_mappings(slat)
    except (KeyError, TypeError, ValueError) as e:
        raise ScenarioError(f"not a slatcheck state ({type(e).__name__}: {e})",
                            file=str(res.artifacts / "slat.json")) from None


def _newest(results: list[ScenarioResult]) -> list[ScenarioResult]:
    """One result per scenario: the newest (by provenance timestamp) of its runs."""
    best: dict[str, ScenarioResult] = {}
    for r in results:
        old = best.get(r.name)
        if old is None or str(r.provenance.get("timestamp", "")) >= \
                str(old.provenance.get("timestamp", "")):
            best[r.name] = r
    return list(best.values())


def load_side(path: Path) -> list[Recorded]:
    """The recorded runs at *path* (an artifacts root or a run directory)."""
    return [Recorded(r, _mappings(r)) for r in _newest(load_results([path]))]


def _signatures(side: Sequence[Recorded]) -> dict[str, Signature]:
    """The findings' signatures, leaving out a negative scenario's expected findings (an
    ``xfailed`` run: they are its success, not news, as in the history)."""
    return {s.id: s for rec in side if rec.result.outcome != "xfailed"
            for f in rec.result.findings
            for s in (signature(rec.result.name, rec.result.hypervisor, f),)}


def compare(base: Sequence[Recorded], new: Sequence[Recorded], base_path: str = "base",
            new_path: str = "new") -> Comparison:
    """The comparison of two sides' recorded runs (pure)."""
    b = {rec.result.name: rec for rec in base}
    n = {rec.result.name: rec for rec in new}
    names = list(dict.fromkeys([*b, *n]))
    bsig, nsig = _signatures(base), _signatures(new)
    state: list[StateChange] = []
    for name in names:
        bm, nm = (b[name].mappings if name in b else None), \
            (n[name].mappings if name in n else None)
        if bm is not None and nm is not None:
            state += state_changes(name, bm, nm)
    return Comparison(
        base_path, new_path, tuple(origins([r.result for r in base])),
        tuple(origins([r.result for r in new])),
        tuple(VerdictChange(name, b[name].result if name in b else None,
                            n[name].result if name in n else None) for name in names),
        tuple(sorted(s for k, s in nsig.items() if k not in bsig)),
        tuple(sorted(s for k, s in bsig.items() if k not in nsig)),
        tuple(sorted(s for k, s in nsig.items() if k in bsig)),
        tuple(state))


def _side(label: str, path: str, found: Sequence[Origin]) -> list[str]:
    return [f"{label}: {path}"] + [f"    {line}" for line in origin_lines(found)]


def render_text(cmp: Comparison) -> str:
    """What ``slatcheck compare`` prints."""
    out = _side("baseline", cmp.base_path, cmp.base_origins) + \
        _side("new", cmp.new_path, cmp.new_origins)
    changed = [v for v in cmp.scenarios if v.changed]
    out += ["", f"verdicts: {len(changed)} changed, "
                f"{len(cmp.scenarios) - len(changed)} unchanged"]
    out += [f"  {v.text()}" for v in changed]
    out += ["", f"findings: {len(cmp.new_findings)} new, {len(cmp.gone_findings)} gone, "
                f"{len(cmp.kept_findings)} still there"]
    for word, sigs in (("new  ", cmp.new_findings), ("gone ", cmp.gone_findings),
                       ("still", cmp.kept_findings)):
        out += [f"  {word} {s.id} {s.title}" for s in sigs]
    out += ["", f"state (slat.json, host addresses left out): {len(cmp.state)} "
                f"difference(s)"]
    out += [f"  {c.scenario}: {c.text()}" for c in cmp.state]
    verdict = "REGRESSED" if cmp.regressions else "no regression"
    out += ["", f"{verdict}" + (f": {len(cmp.regressions)} item(s)" if cmp.regressions
                                else "")]
    out += [f"  {line}" for line in cmp.regressions]
    return "\n".join(out) + "\n"
