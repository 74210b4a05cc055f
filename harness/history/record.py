"""Appending a run's results to the history (what ``slatcheck run`` and the plugin call)."""

from __future__ import annotations

import datetime
import platform
import uuid
from collections.abc import Sequence
from pathlib import Path

from harness.history.store import Run, append, open_store, rows_of
from harness.iterations import iterations_of
from harness.result import ScenarioResult

__all__ = ["night_label", "new_run", "record_results"]


def night_label(given: str | None = None) -> str:
    """*given*, else today's UTC date (``2026-12-01``)."""
    return given or datetime.datetime.now(datetime.UTC).date().isoformat()


def new_run(night: str | None = None, run_id: str | None = None) -> Run:
    """This run's identity: a fresh id (or *run_id*), its night label, this host."""
    return Run(run_id=run_id or uuid.uuid4().hex[:16], night=night_label(night),
               host=platform.node())


def record_results(path: Path, results: Sequence[ScenarioResult], run: Run) -> int:
    """Append the rows of *results* (and their iterations) to the store at *path*."""
    rows = [row for res in results for row in rows_of(res, run, iterations_of(res))]
    with open_store(path) as conn:
        return append(conn, rows)
