"""Scenario validation: errors name the file, the line and the field; nothing boots."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import ScenarioError
from harness.scenario import load_scenario, parse_size

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


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as ei:
        load_scenario(write(tmp_path, text))
    return ei.value


def test_good_scenario_loads_with_step_lines(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, GOOD))
    assert [s.kind for s in sc.steps] == ["boot", "workload", "check"]
    assert [s.line for s in sc.steps] == [4, 5, 10]
    assert sc.expect == {"verdict": "pass"}


def test_misspelt_field_names_file_line_and_field(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("      touch:", "      tuoch:"))
    assert err.line == 8
    assert err.field == "steps.1.workload.tuoch"
    assert str(tmp_path / "s.yaml") in str(err) and ":8:" in str(err)
    assert "touch" in str(err)          # the allowed names are listed


def test_wrong_type_names_field(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("check: {vms: 1}", "check: {vms: one}"))
    assert err.line == 10
    assert err.field == "steps.2.check.vms"


def test_unknown_step_kind(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("  - check:", "  - chek:"))
    assert err.line == 10
    assert "chek" in str(err)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("  - check: {vms: 1}", "  - check: {vms: 1"))
    assert err.line is not None and err.line >= 10
    assert "YAML" in str(err)


def test_touch_outside_slots(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("{gpa: 0x1000, access: w}",
                                          "{gpa: 0x20000, access: w}"))
    assert err.line == 9 and "no slot" in str(err)


def test_unaligned_and_overlapping_slots(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("size: 64K", "size: 100"))
    assert "aligned" in str(err) and err.line == 7
    text = GOOD.replace("        - {gpa: 0x0, size: 64K}",
                        "        - {gpa: 0x0, size: 64K}\n        - {gpa: 0x8000, size: 4K}")
    assert "overlaps" in str(error_of(tmp_path, text))


def test_inject_needs_a_touched_page(tmp_path: Path) -> None:
    text = GOOD.replace("  - check: {vms: 1}",
                        "  - inject: {kind: clear, gpa: 0x5000}\n  - check: {vms: 1}")
    err = error_of(tmp_path, text)
    assert err.field == "steps.2.inject.gpa" and "0x5000" in str(err)


def test_sizes() -> None:
    assert parse_size("64K") == 0x10000
    assert parse_size("1G") == 1 << 30
    assert parse_size("0x2000") == 0x2000


def test_cli_exit_2_and_nothing_boots(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.runner as runner
    called = []
    monkeypatch.setattr(runner, "run_scenario", lambda *a, **k: called.append(a))
    bad = write(tmp_path, GOOD.replace("      touch:", "      tuoch:"))
    rc = main(["run", str(bad), "--artifacts", str(tmp_path / "a")])
    assert rc == 2 and not called
    err = capsys.readouterr().err
    assert f"{bad}:8" in err and "tuoch" in err


def test_shipped_scenarios_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "scenarios"
    files = sorted(root.rglob("*.yaml"))
    assert files
    for f in files:
        assert load_scenario(f).name


@pytest.mark.parametrize("old, new, field, valid", [
    ("image: linux-amd64", "image: linux-amd46", "guest.image", "linux-amd64"),
    ("os: linux", "os: linus", "guest.os", "linux"),
    ("name: t\n", "name: t\nhypervisor: linux-kvm-vmx\n", "hypervisor", "linux-kvm-svm"),
])
def test_unknown_registry_names_list_the_valid_ones(tmp_path: Path, old: str, new: str,
                                                    field: str, valid: str) -> None:
    err = error_of(tmp_path, GOOD.replace(old, new, 1))
    assert err.field == field and valid in str(err) and err.line is not None
