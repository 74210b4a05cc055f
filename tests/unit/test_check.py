"""The check step's glue without a VM: pairing, leftovers, the model's input, findings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import harness.check as check
from harness.errors import InfraError
from harness.formats.base import Mapping, WalkResult
from harness.observe import ObservedVM
from harness.scenario import Step
from harness.steps import WorkloadRun
from harness.workload import SlotReport, VMReport, WorkloadReport

PAGE = 4096


def reported_vm(index: int, hva: int) -> VMReport:
    slots = (SlotReport(0, 0x0, 0x10000, hva, ()), SlotReport(1, 0x80000, 0x10000,
                                                              hva + 0x100000, ("ro",)))
    pagemap = {g: 0x100000 * (index + 1) + g for g in range(0, 0x10000, PAGE)}
    return VMReport(index=index, cycle=0, pid=90, slots=slots, pagemap=pagemap, absent=(),
                    code_pages=(0x0,), exits=())


def run(wid: str, vms: list[VMReport], released: bool = False) -> WorkloadRun:
    r = WorkloadRun(id=wid, params={}, out="", fifo="", released=released)
    r.report = WorkloadReport(events=(), cycles=(tuple(vms),))
    r.touched = [(0x2000, "w")]
    return r


def observed(vm: VMReport, hpa_delta: int = 0) -> ObservedVM:
    maps = [Mapping(g, vm.pagemap[g] + hpa_delta, PAGE, True, True, True, 1,
                    vm.pagemap[g] | 0xe67) for g in (0x0, 0x2000)]
    return ObservedVM(name=f"kvm@{vm.index}", format="npt", root=0x1000, params=None,
                      walk=WalkResult(maps), slot_hvas=frozenset(s.hva for s in vm.slots))


def ctx(tmp_path: Path, *runs: WorkloadRun) -> Any:
    return SimpleNamespace(workloads={r.id: r for r in runs}, checks=[], findings=[],
                           finding_step="", injected=[], phases={}, run_dir=tmp_path,
                           add_phase=lambda name, t: None)


STEP = Step(index=3, kind="check", args={}, line=12)


def test_pairs_by_memslot_addresses(tmp_path: Path) -> None:
    a, b = reported_vm(0, 0x7f0000000000), reported_vm(1, 0x7f1000000000)
    c = ctx(tmp_path, run("w1", [a, b]))
    pairs, leftovers = check._match(c, [observed(b), observed(a)], STEP)
    assert [(ob.name, vm.index) for ob, (_, vm) in pairs] == [("kvm@1", 1), ("kvm@0", 0)]
    assert leftovers == []


def test_a_vm_that_survives_teardown_is_a_leftover_finding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = reported_vm(0, 0x7f0000000000)
    c = ctx(tmp_path, run("w1", [a], released=True))
    monkeypatch.setattr(check, "observe", lambda _: [observed(a)])
    monkeypatch.setattr(check, "hypervisor_of", lambda _: SimpleNamespace(
        model="kvm-x86", model_options={"format": "npt"}))
    check.run_check(c, Step(index=5, kind="check", args={"vms": 0}, line=20))
    assert [f.kind for f in c.findings] == ["leftover"]
    assert c.finding_step == "step 6 (check) at line 20"


def test_unknown_or_missing_vms_are_infrastructure_errors(tmp_path: Path) -> None:
    a, b = reported_vm(0, 0x7f0000000000), reported_vm(1, 0x7f1000000000)
    with pytest.raises(InfraError, match="match no VM"):
        check._match(ctx(tmp_path, run("w1", [a])), [observed(a), observed(b)], STEP)
    with pytest.raises(InfraError, match="found 1 of the held"):
        check._match(ctx(tmp_path, run("w1", [a, b])), [observed(a)], STEP)


def test_model_input_from_the_workload(tmp_path: Path) -> None:
    a = reported_vm(0, 0x7f0000000000)
    desc = check.vm_desc(run("w1", [a]), a, "w1/vm0", {"format": "npt"})
    assert [r.flags for r in desc.ranges] == [frozenset(), frozenset({"readonly"})]
    assert [r.prot for r in desc.ranges] == ["rwx", "rx"]
    assert {(t.gpa, t.access) for t in desc.touched} == {(0x2000, "w"), (0x0, "x")}
    assert desc.backing.resolve(desc.ranges[0], 0x2000) == a.pagemap[0x2000]


def test_check_reports_wrong_frames_and_records_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = reported_vm(0, 0x7f0000000000)
    c = ctx(tmp_path, run("w1", [a]))
    monkeypatch.setattr(check, "observe", lambda _: [observed(a, hpa_delta=PAGE)])
    monkeypatch.setattr(check, "hypervisor_of", lambda _: SimpleNamespace(
        model="kvm-x86", model_options={"format": "npt"}))
    check.run_check(c, STEP)
    assert {(f.kind, f.gpa) for f in c.findings} == {("wrong_frame", 0x0),
                                                     ("wrong_frame", 0x2000)}
    (vm,) = c.checks[0]["vms"]
    assert vm["vm"] == "w1/vm0" and vm["findings"] == 2 and len(vm["mappings"]) == 2
