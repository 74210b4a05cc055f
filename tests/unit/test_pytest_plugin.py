"""The pytest plugin (entry point pytest11): scenario files are items; failures read like
reports.  The items run on a scripted machine handed in through the plugin's own hook."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent

CONFTEST = f'''
import sys
sys.path.insert(0, {str(HERE)!r})
from fakes import FakeWorld

def pytest_slatcheck_services(config):
    return FakeWorld().services(config.rootpath)
'''

SCENARIO = """\
name: {name}
guest: {{os: linux, image: linux-amd64}}
{expect}
steps:
  - boot: {{}}
  - workload:
      slots: [{{gpa: 0x0, size: 64K}}]
      touch: [{{gpa: 0x2000, access: w}}]
{inject}  - check: {{vms: 1}}
"""
INJECT = "  - inject: {kind: frame, gpa: 0x2000}\n"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    d = pytester.mkdir("scenarios")
    (d / "ok.yaml").write_text(SCENARIO.format(name="ok", expect="", inject=""))
    (d / "inject-expected.yaml").write_text(SCENARIO.format(
        name="inject-expected", inject=INJECT,
        expect="expect: {verdict: fail, findings: [{kind: wrong_frame, gpa: 0x2000}]}"))
    (d / "inject-unexpected.yaml").write_text(SCENARIO.format(
        name="inject-unexpected", expect="", inject=INJECT))
    (d / "bad.yaml").write_text(SCENARIO.format(name="bad", expect="", inject="").replace(
        "check: {vms: 1}", "chek: {}"))
    return pytester


def test_items_outcomes_and_reports(project: pytest.Pytester) -> None:
    res = project.runpytest_inprocess("scenarios", "-p", "no:cacheprovider",
                                      "--slat-artifacts", str(project.path / "art"))
    res.assert_outcomes(passed=2, failed=2)
    out = res.stdout.str()
    # a failing scenario shows the verdict, the failing step and the first finding
    assert "expected verdict pass, got fail" in out
    assert "FAIL in step 4 (check) at line 10" in out
    report = [ln for ln in out.splitlines() if not ln.startswith("FAILED ")]
    assert sum("bad.yaml:9:" in ln for ln in report) == 1   # one error for one mistake
    assert "wrong_frame vm=w1/vm0 gpa=0x2000" in out
    # a bad file shows file:line and the field, not a traceback
    assert "bad.yaml:9: field 'steps.2'" in out and "did you mean 'check'" in out
    assert "Traceback" not in out
    assert (project.path / "art" / "ok" / "findings.json").exists()


def test_the_boot_mark_is_registered(project: pytest.Pytester) -> None:
    res = project.runpytest_inprocess("--markers")
    assert "@pytest.mark.boot: boots a real guest" in res.stdout.str()
    res = project.runpytest_inprocess("scenarios", "-m", "not boot", "--strict-markers")
    res.assert_outcomes(failed=1, deselected=3)     # only the bad file is left (no mark)


def test_a_file_named_on_the_command_line_is_collected_anywhere(
        project: pytest.Pytester) -> None:
    other = project.mkdir("elsewhere")
    (other / "mine.yaml").write_text(SCENARIO.format(name="mine", expect="", inject=""))
    (other / "data.yaml").write_text("not: a scenario\n")
    res = project.runpytest_inprocess("elsewhere/mine.yaml", "-p", "no:cacheprovider",
                                      "--slat-artifacts", str(project.path / "art"))
    res.assert_outcomes(passed=1)
