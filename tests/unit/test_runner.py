"""The runner without a VM: whole scenarios on a scripted machine, every verdict, its
artifacts, the summary and the CLI's exit status (see fakes.FakeWorld)."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeWorld

from harness import cli
from harness.console import ConsoleTimeout, GuestPanic
from harness.errors import InfraError, SkipScenario
from harness.junit import write_junit
from harness.result import ScenarioResult, matches_expectation
from harness.runner import run_scenario
from harness.scenario import load_scenario

SCENARIO = """\
name: fake
guest: {{os: linux, image: linux-amd64}}
{expect}
steps:
  - boot: {{}}
  - workload:
      slots: [{{gpa: 0x0, size: 64K}}]
      touch: [{{gpa: 0x2000, access: w}}]
{middle}  - check: {{vms: 1}}
  - release: {{}}
  - check: {{vms: 0}}
"""
INJECT = "  - inject: {kind: frame, gpa: 0x2000}\n"
NEGATIVE = "expect: {verdict: fail, findings: [{kind: wrong_frame, gpa: 0x2000}]}"


def scenario(tmp_path: Path, expect: str = "", middle: str = "") -> Any:
    p = tmp_path / "fake.yaml"
    p.write_text(SCENARIO.format(expect=expect, middle=middle))
    return load_scenario(p)


def artifacts(res: ScenarioResult) -> dict[str, Any]:
    assert res.artifacts is not None
    return {name: json.loads((res.artifacts / name).read_text())
            for name in ("slat.json", "findings.json", "result.json")}


def test_a_clean_run_passes_and_records_everything(tmp_path: Path) -> None:
    world = FakeWorld()
    res = run_scenario(scenario(tmp_path), tmp_path / "art", services=world.services(tmp_path))
    assert (res.verdict, res.status, res.outcome) == ("pass", 0, "passed"), res.message
    a = artifacts(res)
    assert a["result.json"]["verdict"] == "pass"
    assert [c["step"] for c in a["slat.json"]["checks"]] == [
        "step 3 (check) at line 9", "step 5 (check) at line 11"]
    assert len(a["slat.json"]["checks"][0]["vms"][0]["mappings"]) == 2
    prov = a["result.json"]["provenance"]
    assert prov["machine"]["emulator"] == "fake" and prov["slatcheck"]["version"]
    assert prov["timestamp"].endswith("+00:00") and prov["host"]["kernel"]
    assert res.properties["guest.uname"] == "6.1.0-fake"
    assert "echo go 1<>/tmp/slat-w1.fifo" in world.guest.typed
    assert (res.artifacts / "workload-w1.out").exists()


def test_an_injected_corruption_fails_as_the_negative_scenario_expects(tmp_path: Path) -> None:
    world = FakeWorld()
    res = run_scenario(scenario(tmp_path, NEGATIVE, INJECT), tmp_path / "art",
                       services=world.services(tmp_path))
    assert (res.verdict, res.outcome, res.status, res.exit_status) == ("fail", "xfailed", 0, 1)
    assert res.failed_step == "step 4 (check) at line 10"
    assert "FAIL (as expected)" in res.summary()
    assert artifacts(res)["findings.json"][0]["gpa"] == "0x2000"
    assert (res.artifacts / "injections.log").read_text().startswith("step 3 (inject)")


def test_a_negative_scenario_that_passes_is_a_failure(tmp_path: Path) -> None:
    res = run_scenario(scenario(tmp_path, NEGATIVE), tmp_path / "art",
                       services=FakeWorld().services(tmp_path))
    assert (res.verdict, res.outcome, res.status) == ("pass", "failed", 1)
    assert matches_expectation(res) == (False, "expected verdict fail, got pass")


@pytest.mark.parametrize("exc, verdict, status", [
    (InfraError("gdb lost"), "error", 3),
    (ConsoleTimeout("no shell"), "timeout", 1),
    (GuestPanic("linux", "Oops:", "Oops: 0002 [#1] SMP"), "panic", 1),
    (SkipScenario("no NRIP save"), "skip", 0),
    (KeyboardInterrupt("signal 15 (SIGTERM)"), "interrupted", 1),
    (ValueError("a harness bug"), "error", 3),
])
def test_every_ending_writes_artifacts_and_cleans_up(tmp_path: Path, exc: BaseException,
                                                     verdict: str, status: int) -> None:
    world = FakeWorld()
    world.observe_error = exc
    res = run_scenario(scenario(tmp_path), tmp_path / "art", services=world.services(tmp_path))
    assert (res.verdict, res.exit_status) == (verdict, status)
    assert res.failed_step == "step 3 (check) at line 9"
    a = artifacts(res)
    assert a["result.json"]["verdict"] == verdict
    assert "slatcheck-init: ready" in (res.artifacts / "console.log").read_text()
    assert not world.machine_alive()          # the machine was shut down
    assert (res.artifacts / "traceback.txt").exists() == isinstance(exc, ValueError)
    if verdict == "panic":
        assert a["findings.json"][0]["kind"] == "panic"
    if isinstance(exc, KeyboardInterrupt):
        assert "SIGTERM" in res.message


def test_a_failing_shell_condition_fails_the_scenario(tmp_path: Path) -> None:
    text = SCENARIO.format(expect="", middle="  - shell: {cmd: 'uname -r', expect: '^5\\.'}\n")
    (tmp_path / "s.yaml").write_text(text)
    res = run_scenario(load_scenario(tmp_path / "s.yaml"), tmp_path / "art",
                       services=FakeWorld().services(tmp_path))
    assert (res.verdict, res.failed_step) == ("fail", "step 3 (shell) at line 9")
    assert "does not match /^5\\./" in res.message


def test_run_dirs_do_not_collide(tmp_path: Path) -> None:
    a = run_scenario(scenario(tmp_path), tmp_path, services=FakeWorld().services(tmp_path))
    b = run_scenario(scenario(tmp_path), tmp_path, services=FakeWorld().services(tmp_path))
    assert a.artifacts != b.artifacts and a.verdict == b.verdict == "pass"


def test_junit_has_provenance_and_expected_failures_pass(tmp_path: Path) -> None:
    good = run_scenario(scenario(tmp_path, NEGATIVE, INJECT), tmp_path / "art",
                        services=FakeWorld().services(tmp_path))
    world = FakeWorld()
    world.observe_error = InfraError("qemu died")
    bad = run_scenario(scenario(tmp_path), tmp_path / "art", services=world.services(tmp_path))
    write_junit([good, bad], tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["fake.guest.uname"] == "6.1.0-fake"
    assert props["fake.provenance.machine.emulator"] == "fake"
    cases = root.findall(".//testcase")
    assert [c.find("failure") is None and c.find("error") is None for c in cases] == \
        [True, False]
    assert "qemu died" in (cases[1].find("error").get("message") or "")  # type: ignore[union-attr]


def test_cli_runs_all_prints_a_summary_and_exits_with_the_worst(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = FakeWorld()
    world.observe_errors = [None, InfraError("qemu died")]   # the second run's check fails
    path = scenario(tmp_path).path
    rc = cli.main(["run", str(path), str(path), "--artifacts", str(tmp_path / "a"),
                   "--junit", str(tmp_path / "j.xml")], services=world.services(tmp_path))
    assert rc == 3
    out = capsys.readouterr().out
    assert "fake: PASS" in out and "fake: ERROR" in out and "qemu died" in out
    assert "1 failed, 1 passed" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["outcomes"] == {"passed": 1, "failed": 1} and summary["exit_status"] == 3
    assert len(ET.parse(tmp_path / "j.xml").getroot().findall(".//testcase")) == 2


def test_verbose_adds_each_checked_vm_and_quiet_keeps_only_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = scenario(tmp_path).path
    outs = {}
    for flag in ("-v", None, "-q"):
        world = FakeWorld()
        args = ["run", str(path), "--artifacts", str(tmp_path / str(flag))]
        assert cli.main(args + ([flag] if flag else []), services=world.services(tmp_path)) == 0
        outs[flag] = capsys.readouterr().out
    vm_line = "] · w1/vm0 (kvm@0): npt root 0x10000"
    assert vm_line in outs["-v"] and "2 leaves (4K x2), 0 findings" in outs["-v"]
    assert vm_line not in outs[None] and "step 3 (check) at line 9" in outs[None]
    assert "step 3 (check)" not in outs["-q"] and "1 passed" in outs["-q"]


def test_a_hung_step_ends_at_its_own_timeout(tmp_path: Path) -> None:
    world = FakeWorld()
    world.observe_delay = 60
    text = SCENARIO.format(expect="", middle="").replace("  - check: {vms: 1}",
                                                        "  - check: {vms: 1}\n    timeout: 1", 1)
    (tmp_path / "s.yaml").write_text(text)
    res = run_scenario(load_scenario(tmp_path / "s.yaml"), tmp_path / "art",
                       services=world.services(tmp_path))
    assert (res.verdict, res.failed_step) == ("timeout", "step 3 (check) at line 9")
    assert "ran past its timeout (1 s)" in res.message and res.duration < 20
    assert not world.machine_alive()


CHILD = """
import os, signal, sys, threading, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from fakes import FakeWorld
from harness.cli import main
world = FakeWorld()
world.observe_delay = {observe_delay}
world.exit_delay = {exit_delay}
sys.exit(main(["run", {scenario!r}, "--artifacts", {art!r}, "--junit", {junit!r}, "-q"],
              services=world.services(Path({tmp!r}))))
"""


def _child(tmp_path: Path, popen: dict[str, Any] | None = None,
           **kw: Any) -> subprocess.Popen[str]:
    popen = popen or {}
    path = scenario(tmp_path).path
    code = CHILD.format(tests=str(Path(__file__).parent), scenario=str(path),
                        art=str(tmp_path / "art"), junit=str(tmp_path / "j.xml"),
                        tmp=str(tmp_path), **kw)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_a_second_ctrl_c_during_clean_up_keeps_clean_up_and_the_exit_status(
        tmp_path: Path) -> None:
    child = _child(tmp_path, observe_delay=60, exit_delay=2)
    report = tmp_path / "art" / "fake" / "workload-w1.out"
    deadline = time.monotonic() + 60
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)                                     # past the workload: in the check
    child.send_signal(signal.SIGINT)
    out = child.stdout.readline()                     # type: ignore[union-attr]
    assert "shutting down" in out                     # clean-up began ...
    child.send_signal(signal.SIGINT)                  # ... and is interrupted again
    _, err = child.communicate(timeout=30)
    assert child.returncode == 1, err
    assert "Traceback" not in err
    result = json.loads((tmp_path / "art" / "fake" / "result.json").read_text())
    assert result["verdict"] == "interrupted"
    cases = ET.parse(tmp_path / "j.xml").getroot().findall(".//testcase")
    assert len(cases) == 1 and cases[0].find("failure") is not None


def test_a_full_disk_is_an_infrastructure_error_with_no_traceback(tmp_path: Path) -> None:
    def small_files() -> None:                        # every file written stops at 2 KiB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
    child = _child(tmp_path, observe_delay=0, exit_delay=0,
                   popen={"preexec_fn": small_files})
    _, err = child.communicate(timeout=60)
    assert child.returncode == 3, err
    assert "Traceback" not in err and "cannot write" in err
    run_dir = tmp_path / "art" / "fake"
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]


def test_the_kernel_under_test_is_built_and_recorded(tmp_path: Path) -> None:
    """guest.kernel goes to the services' kernel image builder; result.json and the JUnit
    properties say where the kernel came from."""
    from dataclasses import replace

    from harness.images.recipe import KernelSource
    services = FakeWorld().services(tmp_path)
    image = services.build_image("linux-amd64", print)
    built: list[KernelSource] = []
    prov = {"form": "build-tree", "path": "/k/build", "config_sha256": "ab" * 32}

    def build_kernel_image(name: str, kernel: KernelSource, progress: Any) -> Any:
        built.append(kernel)
        return replace(image, manifest={"files": {}, "kernel": prov})

    sc = scenario(tmp_path)
    sc = replace(sc, guest=replace(sc.guest, kernel=KernelSource(tmp_path / "build")))
    res = run_scenario(sc, tmp_path / "art", services=replace(
        services, build_kernel_image=build_kernel_image))
    assert res.verdict == "pass", res.message
    assert built == [KernelSource(tmp_path / "build")]
    assert artifacts(res)["result.json"]["provenance"]["kernel"] == prov
    assert res.properties["kernel.config_sha256"] == "ab" * 32
    no_builder = run_scenario(sc, tmp_path / "art2", services=services)
    assert no_builder.verdict == "error" and "kernel given by path" in no_builder.message
