"""The runner without a VM: fake step handlers drive every verdict and its artifacts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

import harness.runner as runner
from harness.cli import main
from harness.console import ConsoleTimeout, GuestPanic
from harness.errors import InfraError, StepFailed
from harness.findings import Finding
from harness.junit import write_junit
from harness.result import ScenarioResult, matches_expectation
from harness.scenario import load_scenario

SCENARIO = """\
name: fake
guest: {os: linux, image: linux-amd64}
expect: {verdict: fail, findings: [{kind: wrong_frame, gpa: 0x2000}]}
steps:
  - boot: {}
  - check: {}
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Any:
    p = tmp_path / "fake.yaml"
    p.write_text(SCENARIO)
    return load_scenario(p)


def fake_steps(monkeypatch: pytest.MonkeyPatch, check: Any) -> list[str]:
    """Replace boot and check; boot registers a cleanup that must always run."""
    events: list[str] = []

    def boot(ctx: runner.RunContext, step: Any) -> None:
        ctx.stack.callback(events.append, "machine closed")
        (ctx.run_dir / "console.log").write_text("booted\n")
        ctx.properties["guest.uname"] = "6.1.0-test"

    monkeypatch.setitem(runner.STEP_HANDLERS, "boot", boot)
    monkeypatch.setitem(runner.STEP_HANDLERS, "check", check)
    return events


def artifacts(res: ScenarioResult) -> dict[str, Any]:
    assert res.artifacts is not None
    return {name: json.loads((res.artifacts / name).read_text())
            for name in ("slat.json", "findings.json", "result.json")}


def test_findings_give_fail_and_are_written(scenario: Any, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def check(ctx: runner.RunContext, step: Any) -> None:
        ctx.findings.append(Finding("wrong_frame", "w1/vm0", 0x2000, 0x5000, 0x6000))
        ctx.finding_step = step.label
    events = fake_steps(monkeypatch, check)
    res = runner.run_scenario(scenario, tmp_path / "art")
    assert res.verdict == "fail" and res.exit_status == 1
    assert res.failed_step == "step 2 (check) at line 6"
    assert "FAIL in step 2 (check) at line 6" in res.summary()
    assert events == ["machine closed"]
    a = artifacts(res)
    assert a["findings.json"][0]["kind"] == "wrong_frame"
    assert a["findings.json"][0]["gpa"] == "0x2000"
    assert a["result.json"]["verdict"] == "fail"
    assert matches_expectation(res) == (True, "as expected")


@pytest.mark.parametrize("exc, verdict, status", [
    (InfraError("gdb lost"), "error", 3),
    (ConsoleTimeout("no shell"), "timeout", 1),
    (GuestPanic("linux", "Oops:", "Oops: 0002 [#1] SMP"), "panic", 1),
    (StepFailed("npt is N"), "fail", 1),
    (KeyboardInterrupt(), "interrupted", 1),
])
def test_every_failure_still_writes_artifacts_and_cleans_up(
        scenario: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        exc: BaseException, verdict: str, status: int) -> None:
    def check(ctx: runner.RunContext, step: Any) -> None:
        raise exc
    events = fake_steps(monkeypatch, check)
    res = runner.run_scenario(scenario, tmp_path / "art")
    assert (res.verdict, res.exit_status) == (verdict, status)
    assert res.failed_step == "step 2 (check) at line 6"
    assert events == ["machine closed"]
    a = artifacts(res)
    assert a["result.json"]["verdict"] == verdict
    assert (res.artifacts / "console.log").read_text() == "booted\n"
    if verdict == "panic":
        assert a["findings.json"][0]["kind"] == "panic"
    ok, why = matches_expectation(res)
    assert not ok   # wrong verdict, or (StepFailed) the expected finding is absent


def test_expectation_needs_kind_at_gpa(scenario: Any, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def check(ctx: runner.RunContext, step: Any) -> None:
        ctx.findings.append(Finding("wrong_frame", "w1/vm0", 0x3000, 1, 2))
    fake_steps(monkeypatch, check)
    res = runner.run_scenario(scenario, tmp_path / "art")
    ok, why = matches_expectation(res)
    assert not ok and "0x2000" in why


def test_run_dirs_do_not_collide(scenario: Any, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_steps(monkeypatch, lambda ctx, step: None)
    a = runner.run_scenario(scenario, tmp_path)
    b = runner.run_scenario(scenario, tmp_path)
    assert a.artifacts != b.artifacts and a.verdict == b.verdict == "pass"


def test_junit_has_properties_and_failures(scenario: Any, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def check(ctx: runner.RunContext, step: Any) -> None:
        ctx.findings.append(Finding("missing", "w1/vm0", 0x2000, 0x5000, None))
    fake_steps(monkeypatch, check)
    res = runner.run_scenario(scenario, tmp_path / "art")
    write_junit([res], tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["fake.guest.uname"] == "6.1.0-test"
    assert props["fake.artifacts"] == str(res.artifacts)
    failure = root.find(".//testcase/failure")
    assert failure is not None and "missing" in (failure.text or "")


def test_cli_exit_status_is_the_worst(scenario: Any, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    calls = iter([None, InfraError("qemu died")])

    def check(ctx: runner.RunContext, step: Any) -> None:
        exc = next(calls)
        if exc:
            raise exc
    fake_steps(monkeypatch, check)
    rc = main(["run", str(scenario.path), str(scenario.path), "--artifacts",
               str(tmp_path / "a"), "--junit", str(tmp_path / "j.xml")])
    assert rc == 3
    out = capsys.readouterr().out
    assert "fake: PASS" in out and "fake: ERROR" in out and "qemu died" in out
    assert len(ET.parse(tmp_path / "j.xml").getroot().findall(".//testcase")) == 2
