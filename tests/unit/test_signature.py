"""Finding signatures: stable across boots, different where the disagreement differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.findings import NOT_PRESENT, Finding
from harness.result import ScenarioResult
from harness.signature import signature, where_of


def _f(**kw: object) -> Finding:
    base: dict[str, object] = {"kind": "wrong_frame", "vm": "w1/vm0", "gpa": 0x2000,
                               "expected": 0x202000, "observed": 0x203000, "level": 1}
    base.update(kw)
    return Finding(**base)  # type: ignore[arg-type]


def test_host_addresses_never_change_the_signature() -> None:
    a = signature("s", "linux-kvm-svm", _f())
    b = signature("s", "linux-kvm-svm", _f(expected=0x9000, observed=0x7000, entry=0x123008,
                                           table=0x123000, raw=0x7e07, detail="x"))
    assert a == b
    assert len(a.id) == 12 and int(a.id, 16) >= 0


@pytest.mark.parametrize("change", [
    {"kind": "missing"}, {"vm": "w1/vm1"}, {"gpa": 0x3000}, {"level": 2},
    {"end": 0x6000},
])
def test_where_and_what_do_change_it(change: dict[str, object]) -> None:
    assert signature("s", "h", _f()).id != signature("s", "h", _f(**change)).id


def test_scenario_and_hypervisor_are_part_of_it_but_not_the_iteration() -> None:
    assert signature("s", "h", _f()).id != signature("t", "h", _f()).id
    assert signature("s", "h", _f()).id != signature("s", "g", _f()).id
    assert signature("s#3", "h", _f()) == signature("s", "h", _f())


def test_same_page_offsets_are_one_place_and_ranges_are_page_aligned() -> None:
    assert where_of(_f(gpa=0x2abc, level=None)) == "GPA 0x2000"
    assert where_of(_f(gpa=0x2000, end=0x3000, level=None)) == "GPA 0x2000"
    assert where_of(_f(gpa=0x2000, end=0x4800, level=3)) == "GPA 0x2000-0x5000 (level 3)"


def test_without_a_gpa_the_detail_is_used_with_numbers_blanked() -> None:
    a = Finding("kernel_report", "", None, NOT_PRESENT, "WARNING",
                detail="WARNING: CPU: 1 PID: 77 at arch/x86/kvm/mmu/mmu.c:6123 x+0x1f/0x30")
    b = Finding("kernel_report", "", None, NOT_PRESENT, "WARNING",
                detail="WARNING: CPU: 0 PID: 91 at arch/x86/kvm/mmu/mmu.c:6140 x+0x2f/0x30")
    c = Finding("kernel_report", "", None, NOT_PRESENT, "WARNING",
                detail="WARNING: CPU: 0 PID: 91 at arch/x86/kvm/svm/svm.c:6140 x+0x2f/0x30")
    assert signature("s", "h", a) == signature("s", "h", b)
    assert signature("s", "h", a) != signature("s", "h", c)


def test_findings_json_carries_signature_and_title(tmp_path: Path) -> None:
    res = ScenarioResult(name="kvm-npt-smoke", path=tmp_path / "x.yaml",
                         hypervisor="linux-kvm-svm", findings=[_f()])
    row = json.loads(json.dumps(res.findings_json()))[0]
    sig = signature("kvm-npt-smoke", "linux-kvm-svm", _f())
    assert row["signature"] == sig.id and row["title"] == sig.title
    assert row["kind"] == "wrong_frame" and row["gpa"] == "0x2000"
    assert res.to_json()["hypervisor"] == "linux-kvm-svm"
