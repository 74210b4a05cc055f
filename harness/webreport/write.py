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
import os
from collections.abc import Sequence
from pathlib import Path

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
    try:
        slat = load_slat(run_dir)
    except ScenarioError as e:
        slat, problems = None, [str(e)]
    href = Path(os.path.relpath(run_dir.resolve(), page_dir.resolve())).as_posix()
    tail = _tail(run_dir / "console.log", CONSOLE_TAIL) if res.outcome == "failed" else ()
    return RunView(res, findings, slat, href, _files(run_dir), tail, tuple(problems))


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
