"""The history store: one SQLite file, a row per scenario run (and per iteration).

Where it is: ``--history PATH``, else ``$SLATCHECK_HISTORY``, else
``$XDG_CACHE_HOME/slatcheck/history.sqlite`` (``~/.cache`` by default);
``--no-history`` (or ``SLATCHECK_HISTORY=off``) records nothing.  The store runs in
WAL mode with a busy timeout, so pytest-xdist's workers and concurrent ``slatcheck
run`` processes append to one file safely; each row carries a unique ``uid``, so
merging a shard's store into another twice adds its rows once.

Tables: ``runs`` (scenario, file, hypervisor, the inputs of
:mod:`harness.history.inputs`, verdict, outcome, duration, run id, night, host;
``iteration`` 0 for a whole run, N for a repeated run's iteration N) and
``findings`` (the signatures of each row's findings).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import InfraError
from harness.history.inputs import inputs_of
from harness.result import ScenarioResult

__all__ = ["RunRow", "Run", "default_path", "history_path", "open_store", "append",
           "read_rows", "rows_of", "copy_store", "durations", "OFF"]

ENV = "SLATCHECK_HISTORY"
OFF = ("", "off", "no", "none", "0")
SCHEMA = 1
TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL, night TEXT NOT NULL, host TEXT NOT NULL, started TEXT NOT NULL,
    scenario TEXT NOT NULL, file TEXT NOT NULL, hypervisor TEXT NOT NULL,
    iteration INTEGER NOT NULL, iterations INTEGER NOT NULL,
    failed_iterations INTEGER NOT NULL,
    kernel_release TEXT NOT NULL, kernel TEXT NOT NULL, kernel_id TEXT NOT NULL,
    packages TEXT NOT NULL, qemu_version TEXT NOT NULL, machine TEXT NOT NULL,
    accel TEXT NOT NULL, inputs TEXT NOT NULL,
    verdict TEXT NOT NULL, outcome TEXT NOT NULL, duration REAL NOT NULL);
CREATE INDEX IF NOT EXISTS runs_scenario ON runs (scenario, night);
CREATE TABLE IF NOT EXISTS findings (
    run INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    signature TEXT NOT NULL, title TEXT NOT NULL, kind TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS findings_run ON findings (run);
"""


@dataclass(frozen=True)
class Run:
    """Who recorded a row: the run (one ``slatcheck run`` or pytest session), its night
    label (default the UTC date) and the host."""

    run_id: str
    night: str
    host: str


@dataclass(frozen=True)
class RunRow:
    """One scenario run (``iteration`` 0) or one iteration of a repeated run."""

    uid: str
    run_id: str
    night: str
    host: str
    started: str
    scenario: str
    file: str
    hypervisor: str
    iteration: int
    iterations: int
    failed_iterations: int
    kernel_release: str
    kernel: dict[str, Any]
    kernel_id: str
    packages: dict[str, str]
    qemu_version: str
    machine: str
    accel: str
    inputs: str
    verdict: str
    outcome: str
    duration: float
    findings: tuple[tuple[str, str, str], ...] = field(default=())  # signature, title, kind

    @property
    def passed(self) -> bool:
        """Came out as the scenario expects (a negative scenario failing as it should)."""
        return self.outcome in ("passed", "xfailed")

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"


def default_path() -> Path:
    """``$XDG_CACHE_HOME/slatcheck/history.sqlite`` (``~/.cache`` by default)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "slatcheck" / "history.sqlite"


def history_path(given: Path | None, off: bool = False) -> Path | None:
    """The store a run appends to: *given*, else ``$SLATCHECK_HISTORY``, else the
    default; None when *off* or the variable says ``off``."""
    if off:
        return None
    if given is not None:
        return given
    env = os.environ.get(ENV)
    if env is None:
        return default_path()
    return None if env.strip().lower() in OFF else Path(env)


@contextmanager
def open_store(path: Path) -> Iterator[sqlite3.Connection]:
    """The store at *path* (made with its tables if new), closed on exit.

    A store that cannot be opened or is not a slatcheck history is an InfraError.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=60.0, isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _init(conn, path)
            yield conn
    except (OSError, sqlite3.Error) as e:
        raise InfraError(f"history {path}: {e}") from None


def _init(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, TABLES.split(";")):
            conn.execute(statement)
    except sqlite3.Error:
        conn.execute("ROLLBACK")
        raise
    got = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if got is None:
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
    conn.execute("COMMIT")
    if got is not None and got[0] != str(SCHEMA):
        raise InfraError(f"history {path}: schema {got[0]}, this slatcheck reads {SCHEMA}")


def _row(res: ScenarioResult, run: Run, iteration: int, whole: ScenarioResult) -> RunRow:
    inp = inputs_of(whole.provenance, whole.properties)
    rate = (whole.repeat or {}).get("rate", {})
    sigs = tuple((f["signature"], f["title"], f["kind"]) for f in res.findings_json())
    return RunRow(uid=uuid.uuid4().hex, run_id=run.run_id, night=run.night, host=run.host,
                  started=str(whole.provenance.get("timestamp", "")),
                  scenario=whole.name, file=str(whole.path), hypervisor=whole.hypervisor,
                  iteration=iteration, iterations=int(rate.get("iterations", 0)),
                  failed_iterations=int(rate.get("failures", 0)),
                  kernel_release=inp.kernel_release, kernel=inp.kernel,
                  kernel_id=inp.kernel_id, packages=inp.packages,
                  qemu_version=inp.qemu_version, machine=inp.machine, accel=inp.accel,
                  inputs=inp.key(whole.name), verdict=res.verdict, outcome=res.outcome,
                  duration=round(res.duration, 3), findings=tuple(sorted(set(sigs))))


def rows_of(res: ScenarioResult, run: Run,
            iterations: Sequence[ScenarioResult] = ()) -> list[RunRow]:
    """The rows of one result: the whole run, then each of its *iterations* (the
    iteration results of a repeated run, :func:`harness.iterations.iterations_of`),
    which share the whole run's inputs."""
    out = [_row(res, run, 0, res)]
    for n, it in enumerate(iterations, 1):
        number = it.name.rpartition("#")[2]
        out.append(_row(it, run, int(number) if number.isdigit() else n, res))
    return out


COLUMNS = tuple(f.name for f in fields(RunRow) if f.name != "findings")
JSON_COLUMNS = ("kernel", "packages")


def append(conn: sqlite3.Connection, rows: Iterable[RunRow]) -> int:
    """Add *rows* in one transaction (a row whose uid is there already is left out);
    returns how many were added."""
    added = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for row in rows:
            data = asdict(row)
            vals = [json.dumps(data[c], sort_keys=True) if c in JSON_COLUMNS else data[c]
                    for c in COLUMNS]
            cur = conn.execute(f"INSERT OR IGNORE INTO runs ({', '.join(COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(COLUMNS))})", vals)
            if cur.rowcount:
                added += 1
                conn.executemany("INSERT INTO findings VALUES (?, ?, ?, ?)",
                                 [(cur.lastrowid, *f) for f in row.findings])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return added


def read_rows(conn: sqlite3.Connection, scenario: str | None = None) -> list[RunRow]:
    """Every row (of *scenario*, if given), oldest first, with its findings."""
    where, args = ("WHERE scenario = ?", (scenario,)) if scenario else ("", ())
    runs = conn.execute(f"SELECT id, {', '.join(COLUMNS)} FROM runs {where} "
                        f"ORDER BY night, started, id", args).fetchall()
    sigs: dict[int, list[tuple[str, str, str]]] = {}
    for run, sig, title, kind in conn.execute(
            "SELECT run, signature, title, kind FROM findings ORDER BY signature"):
        sigs.setdefault(run, []).append((sig, title, kind))
    out = []
    for rid, *vals in runs:
        data = dict(zip(COLUMNS, vals, strict=True))
        for c in JSON_COLUMNS:
            data[c] = json.loads(data[c])
        out.append(RunRow(**data, findings=tuple(sigs.get(rid, ()))))
    return out


def copy_store(src: Path, dst: sqlite3.Connection) -> int:
    """Add every row of the store at *src* to *dst*; returns how many were new."""
    if not src.is_file():
        raise InfraError(f"history {src}: no such file")
    with open_store(src) as conn:
        rows = read_rows(conn)
    return append(dst, rows)


def durations(rows: Iterable[RunRow], before_night: str | None = None) -> dict[str, float]:
    """Each scenario's duration in its latest whole run (of a night before
    *before_night*, when given): what shards are balanced by."""
    out: dict[str, float] = {}
    for r in rows:
        if r.iteration == 0 and (before_night is None or r.night < before_night):
            out[r.scenario] = r.duration
    return out
