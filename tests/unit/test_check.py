"""The check step's glue without a VM: a real RunContext on a fake machine and target.

The observed tables are real NPT tables in a fake L1 memory, walked by the real
walker and judged by the real KVM model (see fakes.FakeWorld).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import PAGE, FakeWorld

from harness import check
from harness.console import Console
from harness.context import RunContext, WorkloadRun
from harness.errors import InfraError, ScenarioError
from harness.hypervisors import no_facts
from harness.scenario.spec import (
    CheckStep,
    GuestSpec,
    InjectStep,
    MachineSpec,
    Scenario,
    WorkloadStep,
)
from harness.workload import parse_report


def held_context(world: FakeWorld, tmp_path: Path, stack: ExitStack,
                 released: bool = False) -> RunContext:
    """A context after boot and a held workload (or, *released*, after its teardown)."""
    services = world.services(tmp_path)
    spec = WorkloadStep(index=1, line=5, vms=len(world.vms))
    sc = Scenario(path=tmp_path / "s.yaml", name="s", guest=GuestSpec("linux", "linux-amd64"),
                  hypervisor="linux-kvm-svm", model="kvm-x86", steps=(spec,))
    ctx = RunContext(scenario=sc, run_dir=tmp_path, stack=stack,
                     guest=services.guests["linux"],
                     hypervisor=services.hypervisors["linux-kvm-svm"],
                     model=services.models["kvm-x86"], deadline=1e12, services=services)
    from fakes import machine_config
    ctx.machine = stack.enter_context(services.machines["qemu"](machine_config(tmp_path)))
    ctx.image = services.build_image("linux-amd64", print)
    console = stack.enter_context(Console.connect(
        ctx.machine.console, log_path=tmp_path / "console.log", profile=ctx.guest.console))
    console.wait_for_shell(5)
    ctx.attach_console(console)
    world.released = released
    run = WorkloadRun(spec=spec, out="", fifo="", holds_left=0 if released else 1,
                      status=0 if released else None)
    run.report = parse_report(world.report().splitlines())
    ctx.workloads["w1"] = run
    return ctx


def test_held_vms_agree_with_their_model(tmp_path: Path) -> None:
    world = FakeWorld(n_vms=2)
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        check.run_check(ctx, CheckStep(index=2, line=9))
        assert ctx.findings == []
        vms = ctx.checks[0]["vms"]
        assert [v["vm"] for v in vms] == ["w1/vm0", "w1/vm1"]
        assert [len(v["mappings"]) for v in vms] == [2, 2]
        assert world.target.halts >= 1


def test_findings_name_their_step_and_slat_json_writes_hex(tmp_path: Path) -> None:
    world = FakeWorld()
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        check.run_inject(ctx, InjectStep(index=2, line=7, corruption="frame", gpa=0x2000,
                                         workload="w1"))
        step = CheckStep(index=3, line=9)
        check.run_check(ctx, step)
        (f,) = ctx.findings
        assert f.step == step.label and f.level == 1 and f.raw is not None
        assert f.to_json()["step"] == step.label and f.to_json()["entry"].startswith("0x")
        (vm,) = ctx.checks[0]["vms"]
        assert vm["root"] == hex(world.vms[0].root)
        assert [m["gpa"] for m in vm["mappings"]] == ["0x0", "0x2000"]
        assert vm["discovery"]["pid"] == 4242            # the workload's report: no kernel pid
        assert vm["discovery"]["pid_source"] == "workload report"
        log = (tmp_path / "injections.log").read_text()
        assert "gpa=0x2000 leaf 0x2000+0x1000 level 1 entry@" in log


def test_the_kernels_process_id_must_be_the_workloads(tmp_path: Path) -> None:
    world = FakeWorld()
    world.kernel_pid = 4242
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        check.run_check(ctx, CheckStep(index=2, line=9))
        assert ctx.checks[0]["vms"][0]["discovery"]["pid"] == 4242
        assert "pid_source" not in ctx.checks[0]["vms"][0]["discovery"]
    world = FakeWorld()
    world.kernel_pid = 4243
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        with pytest.raises(InfraError, match="process 4243"):
            check.run_check(ctx, CheckStep(index=2, line=9))


def test_inject_targets_through_the_format_editor(tmp_path: Path) -> None:
    world = FakeWorld()
    frames = world.vms[0].frames
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        # the frame backing GPA 0x5000 (not mapped: from the workload's pagemap)
        check.run_inject(ctx, InjectStep(index=2, line=7, corruption="frame", gpa=0x2000,
                                         workload="w1", to_gpa=0x5000))
        check.run_check(ctx, CheckStep(index=3, line=9))
        assert [(f.kind, f.gpa, f.expected, f.observed) for f in ctx.findings] == [
            ("wrong_frame", 0x2000, frames[0x2000], frames[0x5000])]
        ctx.findings.clear()
        # the frame backing GPA 0x0 (mapped: from its nested leaf); an explicit HPA
        for step in (InjectStep(index=4, line=11, corruption="frame", gpa=0x2000,
                                workload="w1", to_gpa=0x0),
                     InjectStep(index=4, line=11, corruption="frame", gpa=0x2000,
                                workload="w1", to_hpa=0x7000000)):
            check.run_inject(ctx, step)
            check.run_check(ctx, CheckStep(index=5, line=13))
        assert [f.observed for f in ctx.findings] == [frames[0x0], 0x7000000]
        ctx.findings.clear()
        check.run_inject(ctx, InjectStep(index=6, line=15, corruption="memtype", gpa=0x2000,
                                         workload="w1"))
        (inj,) = ctx.injected
        assert inj.corrupted ^ inj.original == 1 << 4         # PCD: PAT index 0 -> 2
        check.run_check(ctx, CheckStep(index=7, line=17))
        assert [(f.kind, f.observed) for f in ctx.findings] == [("memtype", 2)]
        for bad, why in ((InjectStep(index=8, line=19, corruption="frame", gpa=0x2000,
                                     workload="w1", to_gpa=0x900000), "no frame backs"),
                         (InjectStep(index=8, line=19, corruption="frame", gpa=0x2000,
                                     workload="w1", to_hpa=0x7000800), "not aligned")):
            with pytest.raises(ScenarioError, match=why) as ei:
                check.run_inject(ctx, bad)
            assert ei.value.field == "steps.8.inject" and ei.value.file == str(tmp_path / "s.yaml")


def test_a_moved_frame_is_a_wrong_frame_finding(tmp_path: Path) -> None:
    world = FakeWorld()
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        inj = InjectStep(index=2, line=7, corruption="frame", gpa=0x2000, workload="w1")
        check.run_inject(ctx, inj)
        assert [i.gpa for i in ctx.injected] == [0x2000]
        check.run_check(ctx, CheckStep(index=3, line=9))
        assert [(f.kind, f.gpa, f.vm) for f in ctx.findings] == [("wrong_frame", 0x2000,
                                                                  "w1/vm0")]
        assert ctx.finding_step == "step 4 (check) at line 9"
        assert ctx.injected == []          # put back after the check
        again = RunContext(**{**ctx.__dict__, "findings": [], "checks": []})
        check.run_check(again, CheckStep(index=4, line=10))
        assert again.findings == []


def test_a_vm_that_survives_teardown_is_a_leftover_finding(tmp_path: Path) -> None:
    world = FakeWorld()
    world.leftover = True
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack, released=True)
        check.run_check(ctx, CheckStep(index=4, line=20, vms=0))
        assert [f.kind for f in ctx.findings] == ["leftover"]
        assert ctx.finding_step == "step 5 (check) at line 20"


def test_unknown_or_missing_vms_are_infrastructure_errors(tmp_path: Path) -> None:
    world = FakeWorld(n_vms=2)
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        extra = world.vms[1]
        extra.slots[0] = (0, 0x10000, 0x7E0000000000)    # a VM no workload reported
        with pytest.raises(InfraError, match="match no VM"):
            check.run_check(ctx, CheckStep(index=2, line=9))
    world = FakeWorld(n_vms=2)
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        world.vms.pop()                                   # discovery misses a held VM
        with pytest.raises(InfraError, match="found 1 of the 2 held"):
            check.run_check(ctx, CheckStep(index=2, line=9))


def test_model_input_from_the_workload(tmp_path: Path) -> None:
    world = FakeWorld()
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        run = ctx.workloads["w1"]
        (vm,) = run.held_vms()
        desc = check.vm_desc(ctx, run, vm)
        assert desc.name == "w1/vm0" and [r.prot for r in desc.ranges] == ["rwx"]
        assert {(t.gpa, t.access) for t in desc.touched} == {(0x0, "x")}
        assert desc.backing.resolve(desc.ranges[0], 0x2000) == world.vms[0].frames[0x2000]
        assert desc.options == {"format": "npt"}


def test_kernel_facts_are_read_once_per_boot(tmp_path: Path) -> None:
    world = FakeWorld()
    with ExitStack() as stack:
        ctx = held_context(world, tmp_path, stack)
        first = check.kernel_facts(ctx)
        assert check.kernel_facts(ctx) is first
        assert ctx.phases["prepare"] >= 0
        assert PAGE == 4096


@pytest.mark.parametrize("machine, want", [
    (MachineSpec(cpu="EPYC"), 40),                         # QEMU TCG's default phys-bits
    (MachineSpec(cpu="EPYC,phys-bits=43"), 43),
    (MachineSpec(cpu="EPYC", accel="kvm"), 52),
    (MachineSpec(emulator="bochs"), None),                 # Bochs: nothing assumed
])
def test_a_hypervisor_that_cannot_ask_the_l1_gets_the_machines_maxphyaddr(
        tmp_path: Path, machine: MachineSpec, want: int | None) -> None:
    """OpenBSD, FreeBSD and DragonFly read no facts in the L1; their walks (and a
    reserved-bit injection into a 4 KiB leaf) need the L1's MAXPHYADDR all the same."""
    with ExitStack() as stack:
        ctx = held_context(FakeWorld(), tmp_path, stack)
        ctx.scenario = replace(ctx.scenario, machine=machine)
        ctx.hypervisor = replace(ctx.hypervisor, facts=no_facts)
        assert check.kernel_facts(ctx).facts.get("maxphyaddr") == want


def test_the_l1s_own_maxphyaddr_wins_over_the_machines(tmp_path: Path) -> None:
    with ExitStack() as stack:
        ctx = held_context(FakeWorld(), tmp_path, stack)
        ctx.scenario = replace(ctx.scenario, machine=MachineSpec(cpu="EPYC,phys-bits=33"))
        ctx.hypervisor = replace(ctx.hypervisor, facts=lambda console: {"maxphyaddr": 48})
        assert check.kernel_facts(ctx).facts["maxphyaddr"] == 48
