"""pytest plugin (entry point ``pytest11: slatcheck``): every scenario YAML is a test item.

``pytest scenarios/`` runs them (``-n 2`` in parallel with pytest-xdist), from
any directory, once slatcheck is installed.  A YAML file is collected when it
lies under a directory named ``scenarios`` or is named on the command line.  A
failure shows the failing step and the first findings, not a traceback.  The
item passes when the run comes out as the scenario's ``expect`` block says
(``verdict: pass`` by default), so negative scenarios pass by failing as they
should; a ``skip`` verdict skips the item with its reason.  A run interrupted by
Ctrl-C or SIGTERM is reported as a failed item (so it appears in the JUnit file,
also under pytest-xdist) and the session stops after it.  Items carry the
``boot`` mark (they boot a real guest).

Each item's run is appended to the results history (``--slat-history PATH``,
``--slat-no-history``, ``--slat-night LABEL``; the same store as ``slatcheck run``:
``$SLATCHECK_HISTORY``, else the cache directory's ``history.sqlite``), one run id per
session (pytest-xdist's workers share their controller's).  ``--slat-shard I/N``
keeps the I-th of N shards of the scenario items (:mod:`harness.shard`, balanced by
the history's durations) and deselects the others.

A conftest may implement the hook ``pytest_slatcheck_services(config)`` to
return the :class:`~harness.context.Services` scenario items run with (tests of
the plugin hand in a scripted machine that way).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.context import Services
from harness.errors import ScenarioError
from harness.history.record import new_run, record_results
from harness.history.store import Run, durations, history_path, open_store, read_rows
from harness.result import ScenarioResult, matches_expectation
from harness.runner import run_scenario
from harness.scenario import Scenario, load_scenario
from harness.shard import parse_shard, select

__all__ = ["ScenarioFile", "ScenarioItem", "BadScenario"]

MARKS = ("boot: boots a real guest (slow tier)",)
RUN = pytest.StashKey[Run]()


class Hooks:
    """The plugin's hook specifications."""

    @pytest.hookspec(firstresult=True)
    def pytest_slatcheck_services(self, config: pytest.Config) -> Services | None:
        """The services scenario items run with (None: the real ones)."""
        return None


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(Hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slat-artifacts", default="artifacts/pytest",
                     help="artifact root for scenario items (default: artifacts/pytest)")
    parser.addoption("--slat-cold", action="store_true",
                     default=bool(os.environ.get("SLATCHECK_COLD")),
                     help="scenario items always boot (no warm start from a saved state); "
                          "also SLATCHECK_COLD=1")
    parser.addoption("--slat-history", default=None, metavar="PATH",
                     help="the history store scenario items append to (default: "
                          "$SLATCHECK_HISTORY, else the cache directory's history.sqlite)")
    parser.addoption("--slat-no-history", action="store_true",
                     help="scenario items record nothing in a history")
    parser.addoption("--slat-night", default=None, metavar="LABEL",
                     help="the night label of the history rows (default: the UTC date)")
    parser.addoption("--slat-shard", default=None, metavar="I/N",
                     help="run only the I-th of N shards of the scenario items")


def pytest_configure(config: pytest.Config) -> None:
    for mark in MARKS:
        config.addinivalue_line("markers", mark)
    if config.getoption("slat_shard"):
        try:
            parse_shard(config.getoption("slat_shard"))
        except ScenarioError as e:
            raise pytest.UsageError(str(e)) from None
    worker = getattr(config, "workerinput", {})
    config.stash[RUN] = new_run(config.getoption("slat_night"), worker.get("testrunuid"))


def _history(config: pytest.Config) -> Path | None:
    """The store items append to, or None."""
    given = config.getoption("slat_history")
    return history_path(Path(given) if given else None, config.getoption("slat_no_history"))


def _shard_key(item: pytest.Item) -> str:
    """What a scenario item is sharded by: its scenario's name (a bad file's: its stem)."""
    return item.scenario.name if isinstance(item, ScenarioItem) else item.name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--slat-shard I/N``: deselect the scenario items (and bad scenario files) of the
    other shards; other tests run in every shard."""
    text = config.getoption("slat_shard")
    if not text:
        return
    shard = parse_shard(text)
    scen = [i for i in items if isinstance(i, ScenarioItem | BadScenario)]
    path = _history(config)
    known: dict[str, float] = {}
    if path is not None and path.is_file():
        with open_store(path) as conn:
            known = durations(read_rows(conn), before_night=config.stash[RUN].night)
    keep = dict(zip(map(id, scen), select([_shard_key(i) for i in scen], shard, known),
                    strict=True))
    gone = [i for i in items if not keep.get(id(i), True)]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = [i for i in items if keep.get(id(i), True)]


def _named(config: pytest.Config, path: Path) -> bool:
    """Whether *path* was named on the command line."""
    return any(Path(str(a).split("::")[0]).resolve() == path.resolve() for a in config.args)


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    if "scenarios" in file_path.parts or _named(parent.config, file_path):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    """One scenario file: validated at collection, one item."""

    def collect(self) -> Iterator[pytest.Item]:
        try:
            sc = load_scenario(self.path)
        except ScenarioError as e:
            yield BadScenario.from_parent(self, name=self.path.stem, error=e)
            return
        item = ScenarioItem.from_parent(self, name=sc.name, scenario=sc)
        item.add_marker(pytest.mark.boot)
        yield item


class ScenarioFailed(Exception):
    """The run did not come out as the scenario expects."""


class ScenarioItem(pytest.Item):
    """Runs one scenario through the same runner as the CLI."""

    def __init__(self, *, scenario: Scenario, **kw: Any) -> None:
        super().__init__(**kw)
        self.scenario = scenario
        self.result: ScenarioResult | None = None

    def runtest(self) -> None:
        root = Path(self.config.getoption("--slat-artifacts"))
        services = self.config.hook.pytest_slatcheck_services(config=self.config)
        self.result = res = run_scenario(self.scenario, root, services=services,
                                         warm=not self.config.getoption("slat_cold"))
        for key, val in sorted(res.properties.items()):
            self.user_properties.append((key, val))
        self.user_properties.append(("artifacts", str(res.artifacts)))
        self._record(res)
        if res.stop:                      # Ctrl-C or SIGTERM: this item is reported,
            self.session.shouldstop = "interrupted by a signal"   # nothing runs after it
        if res.verdict == "skip":
            pytest.skip(res.message)
        ok, why = matches_expectation(res)
        if not ok:
            raise ScenarioFailed(why)

    def _record(self, res: ScenarioResult) -> None:
        """Append the run to the history (a store that cannot be written fails the item)."""
        path = _history(self.config)
        if path is not None:
            record_results(path, [res], self.config.stash[RUN])

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed) and self.result is not None:
            return f"{excinfo.value}\n{self.result.summary(max_findings=8)}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.scenario.name}"


class BadScenario(pytest.Item):
    """A scenario file that does not validate: fails with the file/line/field message."""

    def __init__(self, *, error: ScenarioError, **kw: Any) -> None:
        super().__init__(**kw)
        self.error = error

    def runtest(self) -> None:
        raise self.error

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario file {self.path.name}"
