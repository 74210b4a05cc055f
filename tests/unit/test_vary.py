"""Seeded variation and the race-hunting fields of a scenario: drawn values, their
validation (file, line and field), the workload's race arguments and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import ScenarioError, ScenarioErrors
from harness.scenario import load_scenario
from harness.scenario.spec import InjectStep, WorkloadStep
from harness.vary import apply, draw, next_seed, reproducer, seeds
from harness.workload import parse_report, workload_argv

BASE = """\
name: v
guest: {os: linux, image: linux-amd64}
EXTRA
steps:
  - boot: {}
  - workload:
      slots: [{gpa: 0x0, size: 64K}, {gpa: 0x100000, size: 64K}]
      touch: [{gpa: 0x1000, access: w}, {gpa: 0x2000, access: r}, {gpa: 0x100000, access: w},
              {gpa: 0x101000, access: r}]
WORKLOAD
  - inject: {kind: frame, gpa: 0x1000, probability: 0.5}
  - check: {}
  - release: {}
"""


def write(tmp_path: Path, extra: str = "", workload: str = "") -> Path:
    p = tmp_path / "v.yaml"
    p.write_text(BASE.replace("EXTRA", extra).replace("WORKLOAD", workload))
    return p


VARY = """vary:
  threads: [false, true]
  vms: {min: 1, max: 4}
  vcpus: {min: 1, max: 3}
  cycles: 2
  touch_order: shuffle
  delay: {min: 0, max: 0.5}"""


def test_a_seed_draws_the_same_values_and_other_seeds_draw_others(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, VARY))
    a, b = draw(sc, 42), draw(sc, 42)
    assert a == b
    many = [draw(sc, s) for s in range(40)]
    assert {d.workloads["w1"].vms for d in many} == {1, 2, 3, 4}
    assert {d.workloads["w1"].threads for d in many} == {False, True}
    assert all(d.workloads["w1"].cycles == 2 for d in many)
    assert len({d.workloads["w1"].order for d in many}) > 5
    assert all(0 <= x <= 0.5 for d in many for x in d.delays.values())
    assert 5 < sum(d.fires[2] for d in many) < 35          # probability 0.5, step index 2
    concrete = apply(sc, a)
    wl = next(s for s in concrete.steps if isinstance(s, WorkloadStep))
    assert (wl.vms, wl.vcpus, wl.threads) == (a.workloads["w1"].vms, a.workloads["w1"].vcpus,
                                             a.workloads["w1"].threads)
    assert sorted(t.gpa for t in wl.touch) == [0x1000, 0x2000, 0x100000, 0x101000]
    inj = next(s for s in concrete.steps if isinstance(s, InjectStep))
    assert inj.probability == (1.0 if a.fires[2] else 0.0)
    assert concrete.vary is None and concrete.seed == 42


def test_dropping_one_range_leaves_the_other_draws_alone(tmp_path: Path) -> None:
    full = load_scenario(write(tmp_path, VARY))
    less = load_scenario(write(tmp_path, VARY.replace("  vcpus: {min: 1, max: 3}\n", "")))
    for seed in range(10):
        a, b = draw(full, seed), draw(less, seed)
        assert a.workloads["w1"].vms == b.workloads["w1"].vms
        assert a.workloads["w1"].order == b.workloads["w1"].order and a.delays == b.delays


def test_seeds_follow_one_another() -> None:
    s = seeds(123)
    first = [next(s) for _ in range(5)]
    assert first[0] == 123 and all(first[i + 1] == next_seed(first[i]) for i in range(4))
    assert len(set(first)) == 5 and all(0 <= x < 2**63 for x in first)


def test_the_reproducer_fixes_what_was_drawn(tmp_path: Path) -> None:
    import yaml
    path = write(tmp_path, VARY)
    sc = load_scenario(path)
    seed = next(s for s in range(100) if not draw(sc, s).fires[2])
    drawn = draw(sc, seed)
    doc = reproducer(yaml.safe_load(path.read_text()), drawn, "note")
    assert "vary" not in doc and doc["seed"] == seed
    assert not any("inject" in s for s in doc["steps"])          # it did not fire
    out = tmp_path / "r.yaml"
    out.write_text(yaml.safe_dump(doc))
    again = load_scenario(out)
    wl = next(s for s in again.steps if isinstance(s, WorkloadStep))
    w = drawn.workloads["w1"]
    assert (wl.vms, wl.vcpus, wl.cycles, wl.threads) == (w.vms, w.vcpus, w.cycles, w.threads)
    delays = [s.delay for s in again.steps[1:]]
    assert delays[0] == pytest.approx(drawn.delays[1], abs=1e-6)


@pytest.mark.parametrize("extra, workload, field, words", [
    ("vary: {vms: {min: 3, max: 1}}", "", "vary.vms", "min 3 is above max 1"),
    ("vary: {vcpus: {min: 1, max: 99}}", "", "vary.vcpus", "leaves 1..16"),
    ("vary: {workloads: [w9]}", "", "vary.workloads.0", "no workload 'w9'"),
    ("vary: {thread: [true]}", "", "vary.thread", "did you mean 'threads'"),
    ("", "      race: {mode: munmap, slot: 0}", "steps.1.workload.race.slot",
     "holds the guest code"),
    ("", "      race: {mode: munmap, slot: 5}", "steps.1.workload.race.slot", "2 slot(s)"),
    ("", "      race: {mode: move_slot, slot: 1, to: 0x8000}", "steps.1.workload.race.to",
     "overlaps"),
    ("", "      race: {mode: unplug, slot: 1}", "steps.1.workload.race.mode", "is not one of"),
    ("", "      race: {mode: munmap, delay_us: {min: 9, max: 2}}",
     "steps.1.workload.race.delay_us", "min 9 is above max 2"),
])
def test_bad_race_fields_name_file_line_and_field(tmp_path: Path, extra: str, workload: str,
                                                  field: str, words: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(write(tmp_path, extra, workload))
    errs = e.value.errors if isinstance(e.value, ScenarioErrors) else [e.value]
    hit = [x for x in errs if x.field == field and words in x.message]
    assert hit, [str(x) for x in errs]
    assert hit[0].file == str(tmp_path / "v.yaml") and hit[0].line > 2


def test_check_vms_is_refused_when_vms_are_drawn(tmp_path: Path) -> None:
    text = BASE.replace("EXTRA", "vary: {vms: {min: 1, max: 2}}").replace("WORKLOAD", "")
    p = tmp_path / "c.yaml"
    p.write_text(text.replace("  - check: {}", "  - check: {vms: 1}"))
    with pytest.raises(ScenarioError, match="check.vms cannot be given"):
        load_scenario(p)


def test_a_race_holds_twice_and_a_closed_vm_is_not_held(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(BASE.replace("EXTRA", "").replace(
        "WORKLOAD", "      race: {mode: close_vm, delay_us: {min: 5, max: 50}, after_us: 100}")
        .replace("  - inject: {kind: frame, gpa: 0x1000, probability: 0.5}\n", "")
        .replace("  - release: {}\n", "  - release: {}\n  - check: {vms: 0}\n  - release: {}\n"))
    sc = load_scenario(p)
    wl = sc.workloads[0]
    assert wl.holds == 2 and wl.vms_at_hold(0) == 1 and wl.vms_at_hold(1) == 0
    argv = workload_argv(apply(sc, draw(sc, 7)).workloads[0])
    i = argv.index("--race")
    assert argv[i:i + 8] == ["--race", "close_vm", "--race-slot", "1", "--race-delay", "5:50",
                             "--race-after", "100"]
    assert argv[argv.index("--race-seed") + 1] == str(draw(sc, 7).workloads["w1"].race_seed)
    bad = p.read_text().replace("check: {vms: 0}", "check: {vms: 1}")
    p.write_text(bad)
    with pytest.raises(ScenarioError, match="expects 1 live VM"):
        load_scenario(p)


def ev(**kw: object) -> str:
    return "@@SLAT " + json.dumps(kw)


def test_the_report_after_a_race_is_the_vm_as_it_is_now() -> None:
    lines = [ev(event="vm", vm=0, pid=9, cycle=0),
             ev(event="slot", vm=0, slot=0, gpa=0, size=0x10000, hva=0x7000000, flags=""),
             ev(event="slot", vm=0, slot=1, gpa=0x100000, size=0x10000, hva=0x8000000, flags=""),
             ev(event="pagemap", vm=0, slot=1, runs=[[0x100000, 0x500, 16]]),
             ev(event="hold"),
             ev(event="race", vm=0, cycle=0, mode="move_slot", slot=1, delay_us=40, at_us=41,
                took_us=3, end_us=2100, errno=0, vcpus=[{"rounds": 7, "end": "stopped",
                                                          "at_us": 2090}]),
             ev(event="restate", vm=0),
             ev(event="slot_gone", vm=0, slot=1, gpa=0x100000, size=0x10000, hva=0x8000000,
                flags=""),
             ev(event="slot", vm=0, slot=0, gpa=0, size=0x10000, hva=0x7000000, flags=""),
             ev(event="slot", vm=0, slot=1, gpa=0x200000, size=0x10000, hva=0x8000000, flags=""),
             ev(event="pagemap", vm=0, slot=1, runs=[[0x200000, 0x500, 2], [0x202000, -1, 14]]),
             ev(event="hold")]
    vm = parse_report(lines).vms[0]
    assert vm.raced and vm.race is not None and vm.race["vcpus"][0]["rounds"] == 7
    assert [(s.slot, s.gpa) for s in vm.slots] == [(0, 0), (1, 0x200000)]
    assert [(s.slot, s.gpa) for s in vm.removed] == [(1, 0x100000)]
    assert vm.pagemap == {0x200000: 0x500000, 0x201000: 0x501000}
    assert 0x202000 in vm.absent and 0x100000 not in vm.pagemap
    closed = parse_report(lines[:5] + [ev(event="race", vm=0, cycle=0, mode="close_vm"),
                                       ev(event="destroyed", vm=0), ev(event="hold")])
    assert closed.vms[0].destroyed
