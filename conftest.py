"""pytest plugin: every scenario YAML under scenarios/ is a test item.

``pytest scenarios/`` runs them (``-n auto`` in parallel with pytest-xdist);
a failure shows the failing step and the first findings, not a traceback.
The item passes when the run matches the scenario's ``expect`` block
(``verdict: pass`` by default), so negative scenarios pass by failing as
they should.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slat-artifacts", default="artifacts/pytest",
                     help="artifact root for scenario items (default: artifacts/pytest)")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and "scenarios" in file_path.parts:
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFile(pytest.File):
    """One scenario file: validated at collection, one item."""

    def collect(self) -> Any:
        from harness.errors import ScenarioError
        from harness.scenario import load_scenario
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

    def __init__(self, *, scenario: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.scenario = scenario
        self.result: Any = None

    def runtest(self) -> None:
        from harness.result import matches_expectation
        from harness.runner import run_scenario
        root = Path(self.config.getoption("--slat-artifacts"))
        self.result = run_scenario(self.scenario, root)
        for key, val in sorted(self.result.properties.items()):
            self.user_properties.append((key, val))
        self.user_properties.append(("artifacts", str(self.result.artifacts)))
        if self.result.verdict == "interrupted":
            raise KeyboardInterrupt
        ok, why = matches_expectation(self.result)
        if not ok:
            raise ScenarioFailed(why)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed) and self.result is not None:
            return f"{excinfo.value}\n{self.result.summary(max_findings=8)}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.scenario.name}"


class BadScenario(pytest.Item):
    """A scenario file that does not validate: fails with the file/line/field message."""

    def __init__(self, *, error: Exception, **kw: Any) -> None:
        super().__init__(**kw)
        self.error = error

    def runtest(self) -> None:
        raise self.error

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario file {self.path.name}"
