"""The pytest plugin (conftest.py): scenario files are items; failures read like reports."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

FAKE_STEPS = '''
import harness.runner as runner
from harness.findings import Finding

def _boot(ctx, step):
    pass

def _check(ctx, step):
    if "inject" in ctx.scenario.name:
        ctx.findings.append(Finding("wrong_frame", "w1/vm0", 0x81000, 0x5000, 0x6000,
                                    detail="leaf 0x6e67"))
        ctx.finding_step = step.label

runner.STEP_HANDLERS["boot"] = _boot
runner.STEP_HANDLERS["check"] = _check
'''

SCENARIO = """\
name: {name}
guest: {{os: linux, image: linux-amd64}}
{expect}
steps:
  - boot: {{}}
  - check: {{}}
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((ROOT / "conftest.py").read_text() + FAKE_STEPS)
    d = pytester.mkdir("scenarios")
    (d / "ok.yaml").write_text(SCENARIO.format(name="ok", expect=""))
    (d / "inject-expected.yaml").write_text(SCENARIO.format(
        name="inject-expected",
        expect="expect: {verdict: fail, findings: [{kind: wrong_frame, gpa: 0x81000}]}"))
    (d / "inject-unexpected.yaml").write_text(SCENARIO.format(name="inject-unexpected",
                                                               expect=""))
    (d / "bad.yaml").write_text(SCENARIO.format(name="bad", expect="").replace(
        "check: {}", "chek: {}"))
    return pytester


def test_items_outcomes_and_reports(project: pytest.Pytester) -> None:
    res = project.runpytest_inprocess("scenarios", "-p", "no:cacheprovider",
                                      "--slat-artifacts", str(project.path / "art"))
    res.assert_outcomes(passed=2, failed=2)
    out = res.stdout.str()
    # a failing scenario shows the verdict, the failing step and the first finding
    assert "expected verdict pass, got fail" in out
    assert "FAIL in step 2 (check) at line 6" in out
    assert "wrong_frame vm=w1/vm0 gpa=0x81000 expected=0x5000 observed=0x6000" in out
    # a bad file shows file:line and the field, not a traceback
    assert "bad.yaml:6: field 'steps.1.chek'" in out
    assert "Traceback" not in out
    assert (project.path / "art" / "ok" / "findings.json").exists()
