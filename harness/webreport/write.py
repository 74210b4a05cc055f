"""The HTML report written to a file: the only part of :mod:`harness.webreport` that reads
run directories and writes.

:func:`write_html` is what ``slatcheck run --report html=PATH`` calls (through the
``html`` reporter) and what ``merge`` and ``report`` call on recorded runs
(:func:`harness.rundir.load_results`); *trend* is the history's rows, when there is
one.  *PATH* is the page itself when it ends in ``.html``, else a directory that
gets ``index.html``.  Links to the artifacts are relative, so the page and the
run directories can be moved together.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import ScenarioError
from harness.result import ScenarioResult
from harness.rundir import load_slat
from harness.webreport.page import RunView, render
from harness.webreport.trend import HistoryRow

__all__ = ["write_html", "page_path", "view_of", "CONSOLE_TAIL"]

CONSOLE_TAIL = 40          # console lines shown for a run that did not pass


def page_path(path: Path) -> Path:
    """*path* itself when it names an ``.html`` file, else ``index.html`` inside it."""
    return path if path.suffix in (".html", ".htm") else path / "index.html"


def _files(run_dir: Path) -> tuple[str, ...]:
    """The run directory's files, then its subdirectories (``iter-0003/``)."""
    entries = sorted(run_dir.iterdir())
    return tuple([p.name for p in entries if p.is_file()]
                 + [f"{p.name}/" for p in entries if p.is_dir()])


def _tail(path: Path, n: int) -> tuple[str, ...]:
    try:
        return tuple(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ()


def view_of(res: ScenarioResult, page_dir: Path) -> RunView:
    """What the page shows of *res*; its run directory linked relative to *page_dir*."""
    findings = tuple(res.findings_json())
    run_dir = res.artifacts
    if run_dir is None or not run_dir.is_dir():
        return RunView(res, findings)
    problems: list[str] = []
    state_dir, source = _state_dir(res, run_dir)
    try:
        slat = load_slat(state_dir)
        marked = None if state_dir == run_dir else _findings(state_dir)
    except ScenarioError as e:
        slat, marked, problems = None, None, [str(e)]
    href = Path(os.path.relpath(run_dir.resolve(), page_dir.resolve())).as_posix()
    tail = _tail(run_dir / "console.log", CONSOLE_TAIL) if res.outcome == "failed" else ()
    return RunView(res, findings, slat, href, _files(run_dir), tail, tuple(problems),
                   source if slat is not None else "", marked)


def _state_dir(res: ScenarioResult, run_dir: Path) -> tuple[Path, str]:
    """Where the pictures' ``slat.json`` is: the run's, or a repeated run's first failing
    iteration's (``iter-NNNN/``, looked for by name when the run directory moved)."""
    failures = (res.repeat or {}).get("failures") or []
    if (run_dir / "slat.json").exists() or not failures or not failures[0].get("dir"):
        return run_dir, ""
    first = failures[0]
    where = Path(first["dir"])
    where = where if where.is_dir() else run_dir / where.name
    return where, (f"iteration {first.get('iteration')} (seed {first.get('seed')}): "
                   f"{where.name}/slat.json")


def _findings(state_dir: Path) -> tuple[dict[str, Any], ...]:
    """An iteration's ``findings.json`` rows (none when it has no such file)."""
    path = state_dir / "findings.json"
    if not path.exists():
        return ()
    try:
        rows = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScenarioError(f"cannot read: {e}", file=str(path)) from None
    return tuple(r for r in rows if isinstance(r, dict))


def write_html(results: Sequence[ScenarioResult], path: Path,
               trend: Sequence[HistoryRow] | None = None,
               title: str = "slatcheck report") -> Path:
    """Write the report page of *results* (and *trend*) at *path*; return the page's path."""
    out = page_path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    views = [view_of(r, out.parent) for r in results]
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    _write_atomic(out, render(views, trend, title=title, generated=now))
    return out


def _write_atomic(path: Path, text: str) -> None:
    """*text* at *path* through a temporary file and a rename (no half page on a full disk)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
