"""Repetition inside one boot, without a VM: iterations, seeds, rates, reproducers, keep,
replay and shrink, on the scripted machine of fakes.FakeWorld.

The oracles are the fake world's own records (how many machines it started, which
iterations wrote an injections.log) and the files the run leaves, read with json and
yaml here, not with the code under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from fakes import FakeWorld

from harness import cli
from harness.repeat import RepeatPlan, run_repeated
from harness.replay import replay
from harness.scenario import load_scenario
from harness.shrink import shrink

SCENARIO = """\
name: flaky
guest: {{os: linux, image: linux-amd64}}
steps:
  - boot: {{}}
  - workload:
      vms: 2
      cycles: 1
      slots: [{{gpa: 0x0, size: 64K}}]
      touch: [{{gpa: 0x2000, access: w}}, {{gpa: 0x3000, access: r}}, {{gpa: 0x5000, access: r}}]
{inject}  - check: {{}}
  - release: {{}}
  - check: {{vms: 0}}
"""
TOUCHED = (0x2000, 0x3000, 0x5000)
FLAKY = "  - inject: {kind: frame, gpa: 0x2000, probability: 0.3}\n"


def scenario(tmp_path: Path, inject: str = "", name: str = "flaky.yaml") -> Path:
    p = tmp_path / name
    p.write_text(SCENARIO.format(inject=inject))
    return p


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def quiet(line: str) -> None:
    pass


def test_iterations_share_one_boot_each_with_its_seed_and_artifacts(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    sc = load_scenario(scenario(tmp_path))
    res = run_repeated(sc, tmp_path / "art", RepeatPlan(count=4, seed=11), quiet,
                       world.services(tmp_path))
    assert res.verdict == "pass" and res.status == 0, res.message
    assert len(world.machines) == 1                       # one boot for four iterations
    its = lines(res.artifacts / "iterations.jsonl")
    assert [i["iteration"] for i in its] == [1, 2, 3, 4]
    assert its[0]["seed"] == 11 and len({i["seed"] for i in its}) == 4
    for i in its:
        d = Path(i["dir"])
        result = json.loads((d / "result.json").read_text())
        assert result["verdict"] == "pass" and result["properties"]["seed"] == str(i["seed"])
        assert len(json.loads((d / "slat.json").read_text())["checks"]) == 2
    rep = json.loads((res.artifacts / "repeat.json").read_text())
    assert rep["rate"]["failures"] == 0 and rep["rate"]["iterations"] == 4
    assert rep["rate"]["ci95"][0] == 0.0 and 0.4 < rep["rate"]["ci95"][1] < 0.5
    assert world.guest.typed.count("echo go 1<>/tmp/slat-w1.fifo") == 4
    assert not (res.artifacts / "reproducer.yaml").exists()


def test_a_failing_iteration_never_hides_behind_passing_ones(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    sc = load_scenario(scenario(tmp_path, FLAKY))
    res = run_repeated(sc, tmp_path / "art", RepeatPlan(count=12, seed=5), quiet,
                       world.services(tmp_path))
    its = lines(res.artifacts / "iterations.jsonl")
    fired = [i["iteration"] for i in its if (Path(i["dir"]) / "injections.log").exists()]
    assert 0 < len(fired) < 12, "seed 5 fires the injection in some iterations only"
    assert [i["iteration"] for i in its if i["failed"]] == fired
    assert res.verdict == "fail" and res.status == 1          # though the last may pass
    assert all(f.kind == "wrong_frame" for f in res.findings)
    assert res.repeat is not None and res.repeat["rate"]["failures"] == len(fired)
    assert res.repeat["rate"]["first_failure"] == fired[0]
    assert f"{len(fired)}/12 failed" in res.summary()
    assert len(world.machines) == 1                           # a finding needs no reboot


def test_until_fail_stops_and_its_seed_and_reproducer_replay_the_failure(
        tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    path = scenario(tmp_path, FLAKY)
    res = run_repeated(load_scenario(path), tmp_path / "art", RepeatPlan(until_fail=True,
                       seed=5), quiet, world.services(tmp_path))
    its = lines(res.artifacts / "iterations.jsonl")
    assert its[-1]["failed"] and not any(i["failed"] for i in its[:-1])
    failing = its[-1]
    # --seed S replays that iteration as the first
    again = run_repeated(load_scenario(path), tmp_path / "again",
                         RepeatPlan(count=1, seed=failing["seed"]), quiet,
                         world.services(tmp_path))
    assert again.verdict == "fail"
    # the reproducer is a standalone scenario that fails on a single run
    repro = yaml.safe_load((res.artifacts / "reproducer.yaml").read_text())
    assert repro["seed"] == failing["seed"] and "vary" not in repro
    inject = [s["inject"] for s in repro["steps"] if "inject" in s]
    assert inject and "probability" not in inject[0]
    status = cli.main(["run", str(res.artifacts / "reproducer.yaml"), "--artifacts",
                       str(tmp_path / "r"), "-q"], services=world.services(tmp_path))
    assert status == 1


def test_reboot_every_and_a_dirty_iteration_boot_anew(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    sc = load_scenario(scenario(tmp_path))
    res = run_repeated(sc, tmp_path / "art", RepeatPlan(count=5, reboot_every=2, seed=1),
                       quiet, world.services(tmp_path), warm=False)    # cold: a machine a boot
    assert res.verdict == "pass" and len(world.machines) == 3
    assert {i["boot"] for i in lines(res.artifacts / "iterations.jsonl")} == {1, 2, 3}
    assert (res.artifacts / "boot-02" / "console.log").exists()
    from harness.errors import InfraError
    world2 = FakeWorld(touched=TOUCHED)
    world2.observe_errors = [None]
    world2.observe_error = None
    calls = {"n": 0}
    real = world2.observe

    def flaky_observe(view: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise InfraError("discovery lost its way")
        return real(view)
    world2.observe = flaky_observe  # type: ignore[method-assign]
    res2 = run_repeated(sc, tmp_path / "art2", RepeatPlan(count=3, seed=1), quiet,
                        world2.services(tmp_path), warm=False)
    its = lines(res2.artifacts / "iterations.jsonl")
    assert [i["verdict"] for i in its] == ["pass", "error", "pass"]
    assert [i["boot"] for i in its] == [1, 1, 2] and len(world2.machines) == 2
    assert res2.verdict == "error" and res2.status == 3


def test_kernel_reports_on_the_console_fail_their_iteration(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    report = world.report
    count = {"n": 0}

    def noisy() -> str:
        count["n"] += 1
        extra = ("[   42.000000] UBSAN: shift-out-of-bounds in arch/x86/kvm/mmu.c:12\n"
                 "[   42.000001] shift exponent 64 is too large\n") if count["n"] == 3 else ""
        return extra + report()
    world.report = noisy  # type: ignore[method-assign]
    sc = load_scenario(scenario(tmp_path))
    res = run_repeated(sc, tmp_path / "art", RepeatPlan(count=3, seed=2), quiet,
                       world.services(tmp_path))
    its = lines(res.artifacts / "iterations.jsonl")
    bad = [i for i in its if i["failed"]]
    assert len(bad) == 1 and bad[0]["verdict"] == "fail"
    findings = json.loads((Path(bad[0]["dir"]) / "findings.json").read_text())
    assert findings[0]["kind"] == "kernel_report"
    assert "UBSAN: shift-out-of-bounds" in findings[0]["observed"]
    assert f"iteration {bad[0]['iteration']}" in findings[0]["detail"]


def test_keep_saves_a_core_that_replay_checks_offline(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    path = scenario(tmp_path, FLAKY)
    said: list[str] = []
    from harness import keep as keep_module

    def keeper(failure: Any) -> None:
        keep_module.keep(failure, say=said.append, wait=lambda m, s: "test")
    res = run_repeated(load_scenario(path), tmp_path / "art",
                       RepeatPlan(until_fail=True, seed=5, keep_on_failure=True), quiet,
                       world.services(tmp_path), keeper=keeper)
    assert res.verdict == "fail"
    kept = json.loads((res.artifacts / "keep.json").read_text())
    assert "target remote" in kept["attach"] and kept["ended"] == "test"
    assert any("resume" in s and "quit" in s for s in said)
    assert world.target.left                         # the debugger left L1 stopped
    its = lines(res.artifacts / "iterations.jsonl")
    failing = Path(its[-1]["dir"])
    # it stopped right after the failing check: no release, the corruption left in place
    assert not any(c.startswith("echo go") for c in world.guest.typed[-3:])
    core = failing / "core"
    assert (core / "l1.core").stat().st_size > 0 and (core / "core.json").exists()
    live = json.loads((failing / "findings.json").read_text())
    again = replay(res.artifacts, progress=quiet, services=world.services(tmp_path))
    assert again.verdict == "fail"
    offline = json.loads((Path(again.artifacts) / "findings.json").read_text())
    assert [(f["kind"], f["gpa"]) for f in offline] == [(f["kind"], f["gpa"]) for f in live]


def test_shrink_reduces_while_the_failure_stays(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    path = scenario(tmp_path, FLAKY)
    res = run_repeated(load_scenario(path), tmp_path / "art",
                       RepeatPlan(until_fail=True, seed=5), quiet, world.services(tmp_path))
    repro = res.artifacts / "reproducer.yaml"
    small = shrink(repro, tmp_path / "shrink", tries=1, progress=quiet,
                   services=world.services(tmp_path))
    assert small.reproduced and small.out is not None
    doc = yaml.safe_load(small.out.read_text())
    wl = next(s["workload"] for s in doc["steps"] if "workload" in s)
    assert wl["vms"] == 1
    assert [int(str(t["gpa"]), 0) for t in wl["touch"]] == [0x2000]   # the injected page stays
    assert load_scenario(small.out).seed == yaml.safe_load(repro.read_text())["seed"]
    record = json.loads((small.run_dir / "shrink.json").read_text())
    assert record["kept"] == small.kept and any(t["result"] == "invalid"
                                                 for t in record["tried"])


def test_shrink_of_a_passing_scenario_says_so(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    status = cli.main(["shrink", str(scenario(tmp_path)), "--tries", "2", "--artifacts",
                       str(tmp_path / "s")], services=world.services(tmp_path))
    assert status == 1 and len(world.machines) == 1


def test_cli_repeat_options_and_their_errors(tmp_path: Path, capsys: Any) -> None:
    world = FakeWorld(touched=TOUCHED)
    path = scenario(tmp_path)
    status = cli.main(["run", str(path), "--repeat", "2", "--seed", "9", "--artifacts",
                       str(tmp_path / "a")], services=world.services(tmp_path))
    out = capsys.readouterr().out
    assert status == 0 and "0/2 failed" in out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["scenarios"][0]["repeat"]["iterations"] == 2
    assert cli.main(["run", str(path), "--repeat", "0"]) == 2
    assert cli.main(["run", str(path), "--seed", "-1"]) == 2
    for bad in ("-5", "0", "nan"):        # no iteration would run: a usage error, not a pass
        assert cli.main(["run", str(path), "--until-fail", "--duration", bad]) == 2
        assert f"--duration wants a positive number of seconds, not {float(bad)}" in \
            capsys.readouterr().err
    assert cli.main(["run", str(path), "--keep-on-failure", "--keep-for", "-1"]) == 2


def test_an_interrupted_iteration_is_no_failure_and_no_reproducer(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM during iteration 3: the run is interrupted (exit 1), the rate
    counts the 2 iterations that ran to their end, none failed, nothing to reproduce."""
    world = FakeWorld(touched=TOUCHED)
    real, calls = world.observe, {"n": 0}

    def stopped_at_the_third(view: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 5:                        # two checks an iteration
            raise KeyboardInterrupt("signal 15 (SIGTERM)")
        return real(view)
    world.observe = stopped_at_the_third  # type: ignore[method-assign]
    sc = load_scenario(scenario(tmp_path))
    res = run_repeated(sc, tmp_path / "art", RepeatPlan(count=5, seed=3), quiet,
                       world.services(tmp_path))
    assert (res.verdict, res.status) == ("interrupted", 1) and "SIGTERM" in res.message
    assert res.repeat is not None
    rate = res.repeat["rate"]
    assert (rate["iterations"], rate["failures"], rate["first_failure"]) == (2, 0, None)
    its = lines(res.artifacts / "iterations.jsonl")
    assert [(i["verdict"], i["failed"]) for i in its] == \
        [("pass", False), ("pass", False), ("interrupted", False)]
    assert not list(res.artifacts.rglob("reproducer.yaml"))


def test_duration_bounds_the_iterations_and_until_fail_may_never_fail(tmp_path: Path) -> None:
    world = FakeWorld(touched=TOUCHED)
    sc = load_scenario(scenario(tmp_path))
    res = run_repeated(sc, tmp_path / "a", RepeatPlan(duration=0.0, seed=1), quiet,
                       world.services(tmp_path))
    assert res.repeat is not None and res.repeat["rate"]["iterations"] == 0
    assert res.verdict == "pass" and world.machines == []     # nothing to do: no boot
    res = run_repeated(sc, tmp_path / "b", RepeatPlan(until_fail=True, count=3, seed=1), quiet,
                       world.services(tmp_path))
    assert res.verdict == "pass" and res.repeat is not None
    assert res.repeat["rate"]["iterations"] == 3 and res.repeat["rate"]["first_failure"] is None
