"""Scenario validation: every error names the file, the line and the field; nothing boots."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeWorld

from harness.cli import main
from harness.errors import ScenarioError, ScenarioErrors
from harness.scenario import (
    CheckStep,
    InjectStep,
    ReleaseStep,
    ShellStep,
    WorkloadStep,
    load_scenario,
)
from harness.sizes import format_size, parse_size

GOOD = """\
name: t
guest: {os: linux, image: linux-amd64}
steps:
  - boot: {}
  - workload:
      slots:
        - {gpa: 0x0, size: 64K}
      touch:
        - {gpa: 0x1000, access: w}
  - check: {vms: 1}
"""
ARM = GOOD.replace("linux-amd64", "linux-arm64")


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as ei:
        load_scenario(write(tmp_path, text))
    return ei.value


def errors_of(tmp_path: Path, text: str) -> list[ScenarioError]:
    err = error_of(tmp_path, text)
    return err.errors if isinstance(err, ScenarioErrors) else [err]


def test_good_scenario_loads_into_typed_steps_with_defaults(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, GOOD))
    assert [s.kind for s in sc.steps] == ["boot", "workload", "check"]
    assert [s.line for s in sc.steps] == [4, 5, 10]
    w = sc.steps[1]
    assert isinstance(w, WorkloadStep)
    assert (w.id, w.vms, w.cycles, w.hold, w.holds) == ("w1", 1, 1, "last", 1)
    assert w.slots[0].size == 0x10000 and w.touch[0].access == "w"
    assert sc.steps[2] == CheckStep(index=2, line=10, vms=1)
    assert (sc.hypervisor, sc.model, sc.expect.verdict) == ("linux-kvm-svm", "kvm-x86", "pass")
    assert sc.machine.memory == 1 << 30 and sc.timeouts.step == 120.0


def test_misspelt_field_names_file_line_field_and_a_guess(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("      touch:", "      tuoch:"))
    assert err.line == 8
    assert err.field == "steps.1.workload.tuoch"
    assert str(tmp_path / "s.yaml") in str(err) and ":8:" in str(err)
    assert "did you mean 'touch'?" in str(err) and "allowed here:" in str(err)


def test_wrong_type_names_field(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("check: {vms: 1}", "check: {vms: one}"))
    assert (err.line, err.field) == (10, "steps.2.check.vms")


def test_a_bad_size_string_says_what_a_size_is(tmp_path: Path) -> None:
    """A string that is not a size is told what sizes look like, not that an integer
    was wanted (the size is an integer or a string: the string branch is the one meant)."""
    err = error_of(tmp_path, GOOD.replace("size: 64K}", "size: 64X}"))
    assert err.field == "steps.1.workload.slots.0.size"
    assert "'64X' is not a size" in str(err) and "64K, 1G" in str(err)
    assert "integer" not in str(err)


def test_a_float_is_not_an_integer(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("{gpa: 0x1000, access: w}", "{gpa: 4096.0, access: w}"))
    assert err.field == "steps.1.workload.touch.0.gpa"


def test_unknown_step_kind_gets_a_guess(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("  - check:", "  - chek:"))
    assert err.line == 10 and "unknown key 'chek' (did you mean 'check'?)" in str(err)


def test_enum_typo_gets_a_guess(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("access: w}", "access: write}"))
    assert "'write' is not one of r, w, x" in str(err) and err.line == 9


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("  - check: {vms: 1}", "  - check: {vms: 1"))
    assert err.line is not None and err.line >= 10 and "YAML" in str(err)


def test_touch_outside_slots(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("{gpa: 0x1000, access: w}",
                                          "{gpa: 0x20000, access: w}"))
    assert err.line == 9 and "no slot" in str(err)


def test_alignment_message_blames_the_misaligned_value(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("size: 64K", "size: 100"))
    assert err.field == "steps.1.workload.slots.0.size" and err.line == 7
    assert "slot size 0x64 is not a multiple of 4 KiB" in str(err)
    assert "gpa" not in err.message
    text = GOOD.replace("        - {gpa: 0x0, size: 64K}",
                        "        - {gpa: 0x0, size: 64K}\n        - {gpa: 0x8000, size: 4K}")
    assert "overlaps" in str(error_of(tmp_path, text))


def test_x86_slots_must_be_reachable_by_the_l2(tmp_path: Path) -> None:
    above_4g = GOOD.replace("{gpa: 0x0, size: 64K}",
                            "{gpa: 0x0, size: 64K}\n        - {gpa: 0x100000000, size: 4K}")
    assert load_scenario(write(tmp_path, above_4g)).name == "t"   # long mode: above 4 GiB
    err = error_of(tmp_path, above_4g.replace("0x100000000", "0x10000000000"))
    assert "beyond what the L2 can address (40 bits" in str(err)   # TCG's phys-bits


def test_ipa_bits_is_for_arm64_only(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("      slots:", "      ipa_bits: 44\n      slots:"))
    assert err.field == "steps.1.workload.ipa_bits"
    assert "ipa_bits is for aarch64 guests only, not x86_64" in str(err)
    sc = load_scenario(write(tmp_path, ARM.replace("      slots:",
                                                   "      ipa_bits: 44\n      slots:")))
    assert sc.steps[1].ipa_bits == 44                          # type: ignore[union-attr]


def test_release_of_an_unknown_workload_gets_a_guess(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  - release: {workload: w1x}\n")
    assert err.field == "steps.3.release.workload" and err.line == 11
    assert "unknown workload 'w1x' (did you mean 'w1'?); valid: w1" in str(err)


def test_check_vm_count_must_match_what_is_held(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("check: {vms: 1}", "check: {vms: 3}"))
    assert err.field == "steps.2.check.vms"
    assert "check expects 3 live VM(s), but the workloads hold 1 at this point (w1: 1)" \
        in str(err)
    text = GOOD + "  - release: {}\n  - check: {vms: 1}\n"
    assert "but the workloads hold 0" in str(error_of(tmp_path, text))


def test_a_workload_that_does_not_hold_holds_nothing(tmp_path: Path) -> None:
    text = GOOD.replace("      slots:", "      hold: false\n      slots:")
    assert "hold 0" in str(error_of(tmp_path, text))
    sc = load_scenario(write(tmp_path, text.replace("{vms: 1}", "{vms: 0}")))
    assert sc.steps[1].holds == 0                              # type: ignore[union-attr]
    err = error_of(tmp_path, text.replace("{vms: 1}", "{vms: 0}") + "  - release: {}\n")
    assert "nothing to release" in str(err)


def test_cycles_that_hold_each_are_released_one_by_one(tmp_path: Path) -> None:
    text = GOOD.replace("      slots:", "      cycles: 2\n      hold: each\n      slots:")
    text += "  - release: {workload: w1}\n  - check: {vms: 1}\n  - release: {workload: w1}\n" \
            "  - check: {vms: 0}\n"
    sc = load_scenario(write(tmp_path, text))
    assert sc.steps[1].holds == 2                              # type: ignore[union-attr]
    err = error_of(tmp_path, text + "  - release: {workload: w1}\n")
    assert "workload 'w1' was already released (line 15)" in str(err)


def test_inject_addresses_a_workload_vm_and_needs_a_touched_page(tmp_path: Path) -> None:
    text = GOOD.replace("  - check: {vms: 1}",
                        "  - inject: {kind: clear, gpa: 0x1008, workload: w1, vm: 0}\n"
                        "  - check: {vms: 1}")
    inj = load_scenario(write(tmp_path, text)).steps[2]
    assert inj == InjectStep(index=2, line=10, corruption="clear", gpa=0x1008, workload="w1")
    err = error_of(tmp_path, text.replace("gpa: 0x1008", "gpa: 0x5000"))
    assert err.field == "steps.2.inject.gpa" and "0x5000" in str(err)
    err = error_of(tmp_path, text.replace("vm: 0", "vm: 1"))
    assert "workload 'w1' has 1 VM(s): no VM 1" in str(err)


def test_an_openbsd_guest_needs_an_openbsd_image(tmp_path: Path) -> None:
    errs = {e.field: str(e) for e in errors_of(tmp_path, GOOD.replace("os: linux", "os: openbsd"))}
    assert "image 'linux-amd64' holds a linux guest, not openbsd" in errs["guest.image"]


def test_hypervisor_must_fit_the_image(tmp_path: Path) -> None:
    err = error_of(tmp_path, ARM.replace("name: t\n", "name: t\nhypervisor: linux-kvm-svm\n"))
    assert "runs in a linux x86_64 guest, but image 'linux-arm64' is linux aarch64" in str(err)


def test_model_is_chosen_among_those_the_hypervisor_allows(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("name: t\n", "name: t\nmodel: kvm-arm64\n"))
    assert err.field == "model" and "valid: kvm-x86" in str(err)
    sc = load_scenario(write(tmp_path, GOOD.replace("name: t\n", "name: t\nmodel: kvm-x86\n")))
    assert sc.model == "kvm-x86"


def test_regexes_are_compiled_before_anything_boots(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  - shell: {cmd: 'uname -r', expect: '(unclosed'}\n")
    assert err.field == "steps.3.shell.expect" and "regular expression" in str(err)
    sc = load_scenario(write(tmp_path, GOOD + "  - shell: 'uname -r'\n"))
    assert sc.steps[3] == ShellStep(index=3, line=11, cmd="uname -r")


def test_every_error_of_a_file_is_reported(tmp_path: Path) -> None:
    text = GOOD.replace("check: {vms: 1}", "check: {vms: 2}") + \
        "  - release: {workload: w9}\n  - shell: {cmd: x, expect: '['}\n"
    errs = errors_of(tmp_path, text)
    assert [e.field for e in errs] == ["steps.2.check.vms", "steps.3.release.workload",
                                       "steps.4.shell.expect"]
    assert [e.line for e in errs] == [10, 11, 12]


def test_expected_findings_are_checked(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("steps:", "expect: {verdict: fail, findings: "
                                          "[{kind: wrong_frmae}]}\nsteps:"))
    assert "unknown finding kind 'wrong_frmae' (did you mean 'wrong_frame'?)" in str(err)
    err = error_of(tmp_path, GOOD.replace("steps:", "expect: {verdict: pass, findings: "
                                          "[{kind: missing}]}\nsteps:"))
    assert "expect.findings needs verdict fail" in str(err)


def test_sizes() -> None:
    assert parse_size("64K") == 0x10000 and parse_size("1G") == 1 << 30
    assert parse_size("0x2000") == 0x2000 and format_size(3 << 20) == "3M"
    with pytest.raises(ValueError):
        parse_size("12Q")


def test_cli_validates_every_file_and_nothing_boots(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = FakeWorld()
    bad = write(tmp_path, GOOD.replace("      touch:", "      tuoch:"), "a.yaml")
    good = write(tmp_path, GOOD, "b.yaml")
    worse = write(tmp_path, GOOD.replace("os: linux", "os: linus"), "c.yaml")
    rc = main(["run", str(bad), str(good), str(worse), "--artifacts", str(tmp_path / "a")],
              services=world.services(tmp_path))
    assert rc == 2 and world.machines == []
    err = capsys.readouterr().err
    assert f"{bad}:8" in err and "tuoch" in err
    assert f"{worse}:2: field 'guest.os'" in err and "did you mean 'linux'?" in err
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 2


def test_shipped_scenarios_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "scenarios"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for f in files:
        assert load_scenario(f).name


@pytest.mark.parametrize("old, new, field, valid", [
    ("image: linux-amd64", "image: linux-amd46", "guest.image", "linux-amd64"),
    ("os: linux", "os: linus", "guest.os", "linux"),
    ("name: t\n", "name: t\nhypervisor: linux-kvm-tdx\n", "hypervisor", "linux-kvm-svm"),
    ("name: t\n", "name: t\nmachine: {emulator: simics}\n", "machine.emulator", "qemu"),
])
def test_unknown_registry_names_list_the_valid_ones(tmp_path: Path, old: str, new: str,
                                                    field: str, valid: str) -> None:
    err = error_of(tmp_path, GOOD.replace(old, new, 1))
    assert err.field == field and valid in str(err) and err.line is not None


def test_release_step_type(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, GOOD + "  - release: {}\n"))
    assert sc.steps[3] == ReleaseStep(index=3, line=11)


HIGH = """\
name: t
guest: {os: linux, image: IMAGE}
machine: {cpu: "CPU"}
steps:
  - boot: {}
  - workload:
      slots:
        - {gpa: SLOT, size: 64K}
      touch:
        - {gpa: TOUCH, access: w}
"""


def high(image: str = "linux-amd64", cpu: str = "max", slot: int = 0x0,
         touch: int = 0x1000) -> str:
    return (HIGH.replace("IMAGE", image).replace("CPU", cpu).replace("SLOT", hex(slot))
            .replace("TOUCH", hex(touch)))


@pytest.mark.parametrize("cpu, top", [
    ("max", 1 << 40),                          # TCG's default phys-bits
    ("max,-la57", 1 << 40),
    ("max,phys-bits=52", 1 << 52),             # LA57 L1: 5-level NPT, 52 bits
    ("max,-la57,phys-bits=52", 1 << 48),       # 4-level NPT maps 48 bits
    ("EPYC,phys-bits=52", 1 << 48),
])
def test_x86_reach_follows_the_machine(tmp_path: Path, cpu: str, top: int) -> None:
    ok = high(cpu=cpu, slot=top - 0x10000, touch=top - 0x1000)
    assert load_scenario(write(tmp_path, ok)).name == "t"
    err = error_of(tmp_path, high(cpu=cpu, slot=top, touch=top + 0x1000))
    assert err.field == "steps.1.workload.slots.0" and "cannot use" in str(err)
    assert f"below {top:#x}" in str(err)


def test_arm64_reach_is_the_ipa_size(tmp_path: Path) -> None:
    text = high(image="linux-arm64", cpu="max", slot=1 << 40, touch=(1 << 40) + 0x1000)
    assert "cannot use" in str(error_of(tmp_path, text))
    text = text.replace("      slots:", "      ipa_bits: 48\n      slots:")
    assert load_scenario(write(tmp_path, text)).name == "t"


def test_openbsd_vmm_backend_reaches_4_gib(tmp_path: Path) -> None:
    text = (high(image="openbsd-amd64", cpu="EPYC", slot=1 << 32, touch=(1 << 32) + 0x1000)
            .replace("os: linux", "os: openbsd"))
    err = error_of(tmp_path, text)
    assert "(32 bits" in str(err) and "openbsd-vmm-rvi" in str(err)
    low = high(image="openbsd-amd64", cpu="EPYC").replace("os: linux", "os: openbsd")
    assert load_scenario(write(tmp_path, low)).hypervisor == "openbsd-vmm-rvi"


def test_inject_target_checks(tmp_path: Path) -> None:
    base = GOOD.replace("  - check: {vms: 1}", "  - inject: INJ\n  - check: {vms: 1}")
    ok = load_scenario(write(tmp_path, base.replace(
        "INJ", "{kind: frame, gpa: 0x1000, to: {gpa: 0x3000}}")))
    assert isinstance(ok.steps[2], InjectStep)
    assert (ok.steps[2].to_gpa, ok.steps[2].to_hpa) == (0x3000, None)
    hpa = load_scenario(write(tmp_path, base.replace(
        "INJ", "{kind: frame, gpa: 0x1000, to: {hpa: 0x200000}}")))
    assert (hpa.steps[2].to_gpa, hpa.steps[2].to_hpa) == (None, 0x200000)  # type: ignore[union-attr]
    err = error_of(tmp_path, base.replace("INJ", "{kind: clear, gpa: 0x1000, to: {gpa: 0x0}}"))
    assert err.field == "steps.2.inject.to" and "frame" in str(err)
    err = error_of(tmp_path, base.replace("INJ",
                                          "{kind: frame, gpa: 0x1000, to: {gpa: 0x90000}}"))
    assert err.field == "steps.2.inject.to.gpa" and "no slot" in str(err)
    for to in ("{gpa: 0x0, hpa: 0x0}", "{}"):
        err = error_of(tmp_path, base.replace("INJ", f"{{kind: frame, gpa: 0x1000, to: {to}}}"))
        assert err.field == "steps.2.inject.to"
        assert "name exactly one of: gpa, hpa" in str(err)
    memtype = load_scenario(write(tmp_path, base.replace("INJ", "{kind: memtype, gpa: 0x1000}")))
    assert memtype.steps[2].corruption == "memtype"            # type: ignore[union-attr]


@pytest.mark.parametrize("bits", ["52m", "", "31", "53", "0x30"])
def test_a_bad_phys_bits_is_one_error_at_machine_cpu(tmp_path: Path, bits: str) -> None:
    """The fuzzer's one traceback in 100,000 cases: ``phys-bits=52m`` reached int()."""
    text = GOOD.replace("steps:", f'machine: {{cpu: "max,phys-bits={bits}"}}\nsteps:')
    e = error_of(tmp_path, text)
    assert (e.line, e.field) == (3, "machine.cpu") and f"not {bits!r}" in str(e)
    assert str(e).count("phys-bits") == 1


def test_a_good_phys_bits_passes(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, GOOD.replace(
        "steps:", 'machine: {cpu: "max,phys-bits=46"}\nsteps:')))
    assert sc.machine.cpu == "max,phys-bits=46"
