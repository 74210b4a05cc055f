"""``slatcheck merge OUT_DIR SHARD_DIR...``: the outputs of shards joined into one run's.

Each shard directory is the ``--artifacts`` of one ``slatcheck run --shard I/N``
(or a pytest ``--slat-artifacts`` root).  Its run directories are copied into
OUT_DIR, and ``summary.json`` is written anew from them in the unsharded order
(the ``shard.positions`` each shard's summary records); the shards' JUnit files
(``junit.xml`` in each, or the name given) are joined with junitparser into one
suite in that order, kept valid for strict consumers
(:func:`harness.junit.strict_junit`); each shard's history store
(``history.sqlite`` in it, or a ``.sqlite`` file given among the shards) is added
to the history.  The result is what one unsharded run would have written.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import junitparser

from harness.artifacts import make_run_dir
from harness.errors import ScenarioError
from harness.history.store import copy_store, open_store
from harness.junit import strict_junit
from harness.reporters import write_summary
from harness.result import ScenarioResult
from harness.rundir import RESULT, load_result

__all__ = ["Merged", "merge", "merge_junit", "HISTORY_FILE"]

HISTORY_FILE = "history.sqlite"
SUMMARY = "summary.json"


@dataclass
class Merged:
    """What :func:`merge` wrote."""

    results: list[ScenarioResult]
    junit: Path | None = None
    history_rows: int = 0
    stores: list[Path] = field(default_factory=list)


def _positions(shard: Path) -> dict[str, int]:
    """Run directory name -> place in the unsharded order, from the shard's summary."""
    path = shard / SUMMARY
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        rows = data.get("scenarios", [])
        where = data.get("shard", {}).get("positions") or list(range(len(rows)))
        return {Path(r["artifacts"]).name: int(p) for r, p in zip(rows, where, strict=True)
                if r.get("artifacts")}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ScenarioError(f"not a slatcheck summary ({e})", file=str(path)) from None


def _copy_runs(out: Path, shards: Sequence[Path]) -> list[tuple[tuple[int, int, int], Path]]:
    """Each shard's run directories copied into *out*, with their sort key."""
    copied = []
    for s_index, shard in enumerate(shards):
        if not shard.is_dir():
            raise ScenarioError("no such shard directory", file=str(shard))
        where = _positions(shard)
        runs = sorted(d for d in shard.iterdir() if (d / RESULT).is_file())
        for r_index, run in enumerate(runs):
            dest = make_run_dir(out, run.name)
            shutil.copytree(run, dest, dirs_exist_ok=True)
            key = (where.get(run.name, 1 << 30), s_index, r_index)
            copied.append((key, dest))
    return sorted(copied)


def _case_key(name: str, place: dict[str, int]) -> tuple[int, int, str]:
    """A case's place: its scenario's, then its iteration (``name#N``; the run is 0)."""
    base, _, it = name.partition("#")
    return place.get(base, len(place)), int(it) if it.isdigit() else 0, name


def merge_junit(files: Sequence[Path], order: Sequence[str], out: Path,
                name: str = "slatcheck") -> None:
    """The suites of JUnit *files* as one suite *name*, cases in the scenario *order*."""
    merged = junitparser.TestSuite(name)
    cases: list[junitparser.TestCase] = []
    stamps, hosts, props = [], [], {}
    for f in files:
        xml = junitparser.JUnitXml.fromfile(str(f))
        suites = [xml] if isinstance(xml, junitparser.TestSuite) else list(xml)
        for suite in suites:
            cases += list(suite)
            props.update({p.name: p.value for p in suite.properties()})  # type: ignore[no-untyped-call]
            stamps += [suite.timestamp] if suite.timestamp else []
            hosts += [suite.hostname] if suite.hostname and suite.hostname not in hosts else []
    place = {n: i for i, n in enumerate(order)}
    for case in sorted(cases, key=lambda c: _case_key(c.name, place)):
        merged.add_testcase(case)
    for key, value in sorted(props.items()):
        merged.add_property(key, value)
    if stamps:
        merged.timestamp = min(stamps)
    merged.hostname = ",".join(hosts)
    doc = junitparser.JUnitXml()
    doc.add_testsuite(merged)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(strict_junit(doc.tostring().decode()))  # type: ignore[no-untyped-call]


def merge(out: Path, shards: Sequence[Path], junit: str | None = "junit.xml",
          history: Path | None = None) -> Merged:
    """Join the *shards* (directories, and history stores) into *out* (see the module)."""
    dirs = [s for s in shards if s.suffix != ".sqlite"]
    stores = [s for s in shards if s.suffix == ".sqlite"] + \
        [d / HISTORY_FILE for d in dirs if (d / HISTORY_FILE).is_file()]
    out.mkdir(parents=True, exist_ok=True)
    results = [load_result(d) for _, d in _copy_runs(out, dirs)]
    write_summary(results, out / SUMMARY)
    merged = Merged(results, stores=stores)
    files = [d / junit for d in dirs if junit and (d / junit).is_file()]
    if junit and files:
        merged.junit = out / junit
        merge_junit(files, [r.name for r in results], merged.junit)
    if history is not None and stores:
        with open_store(history) as conn:
            merged.history_rows = sum(copy_store(s, conn) for s in stores)
    return merged
