"""Recorded runs: a run directory's ``result.json`` and ``findings.json`` read back.

``slatcheck report``, ``compare``, ``merge`` and the history read what a run left
behind rather than rerunning it.  :func:`run_dirs` finds the run directories under
the paths given (a run directory itself, or an artifacts root holding several;
the ``iter-NNNN`` directories of a repeated run belong to their run and are not
runs of their own); :func:`load_result` makes a :class:`~harness.result.ScenarioResult`
again, with its findings, expectation and provenance; :func:`load_slat` returns the
extracted state.  A file that is missing or not what slatcheck writes is a
:class:`~harness.errors.ScenarioError` naming the file and the field (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import ScenarioError
from harness.findings import Finding
from harness.result import ScenarioResult
from harness.scenario.spec import Expect, ExpectedFinding

__all__ = ["run_dirs", "load_result", "load_results", "load_slat", "finding_from_json"]

RESULT = "result.json"


def run_dirs(paths: Iterable[Path]) -> list[Path]:
    """The run directories at or directly under *paths*, in order, each once.

    A path that is neither a run directory nor holds one is an error naming it.
    """
    out: list[Path] = []
    for p in paths:
        if (p / RESULT).is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(d for d in p.iterdir() if (d / RESULT).is_file())
        else:
            raise ScenarioError("no such run directory", file=str(p))
        if not found:
            raise ScenarioError(f"neither a run directory (no {RESULT}) nor a directory "
                                f"holding run directories", file=str(p))
        out += [d for d in found if d.resolve() not in {o.resolve() for o in out}]
    return out


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError("missing", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(f"cannot read: {e}", file=str(path)) from None
    except json.JSONDecodeError as e:
        raise ScenarioError(f"not JSON: {e.msg}", file=str(path), line=e.lineno) from None


def _int(v: Any) -> int | None:
    """A hex string (or int) from the JSON form back to an int; None stays None."""
    if v is None or isinstance(v, int):
        return v
    return int(str(v), 16)


def finding_from_json(row: dict[str, Any]) -> Finding:
    """A :class:`Finding` from its ``findings.json`` row (values stay in their JSON form)."""
    return Finding(kind=row["kind"], vm=row.get("vm", ""), gpa=_int(row.get("gpa")),
                   expected=row.get("expected"), observed=row.get("observed"),
                   detail=row.get("detail", ""), end=_int(row.get("end")),
                   entry=_int(row.get("entry")), level=row.get("level"),
                   raw=_int(row.get("raw")), table=_int(row.get("table")),
                   step=row.get("step", ""))


def _expect(data: dict[str, Any]) -> Expect:
    exp = data.get("expect") or {}
    return Expect(verdict=exp.get("verdict", "pass"),
                  findings=tuple(ExpectedFinding(**f) for f in exp.get("findings", ())))


def load_result(run_dir: Path) -> ScenarioResult:
    """The :class:`ScenarioResult` *run_dir* recorded (findings from ``findings.json``)."""
    path = run_dir / RESULT
    data = _read(path)
    field = "scenario"
    try:
        res = ScenarioResult(
            name=data[field], path=Path(data[(field := "file")]),
            hypervisor=data.get((field := "hypervisor"), ""),
            verdict=data[(field := "verdict")], message=data.get((field := "message"), ""),
            failed_step=data.get((field := "failed_step"), ""),
            duration=float(data.get((field := "duration"), 0.0)),
            phases=dict(data.get((field := "phases"), {})),
            properties=dict(data.get((field := "properties"), {})),
            provenance=dict(data.get((field := "provenance"), {})),
            expect=_expect(data), repeat=data.get(field := "repeat"), artifacts=run_dir)
    except (KeyError, TypeError, ValueError) as e:
        raise ScenarioError(f"not a slatcheck result ({type(e).__name__}: {e})",
                            file=str(path), field=field) from None
    fpath = run_dir / "findings.json"
    if fpath.exists():
        rows = _read(fpath)
        try:
            res.findings = [finding_from_json(r) for r in rows]
        except (KeyError, TypeError, ValueError) as e:
            raise ScenarioError(f"not a findings list ({type(e).__name__}: {e})",
                                file=str(fpath)) from None
    return res


def load_results(paths: Iterable[Path]) -> list[ScenarioResult]:
    """:func:`load_result` of every run directory :func:`run_dirs` finds."""
    return [load_result(d) for d in run_dirs(paths)]


def load_slat(run_dir: Path) -> dict[str, Any] | None:
    """The extracted state (``slat.json``) of *run_dir*, or None when the run has none."""
    path = run_dir / "slat.json"
    return _read(path) if path.exists() else None
