"""slatcheck compare on recorded runs: verdicts, findings by signature, mapped state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from recorded import record
from reported import copy_run, edit_json

from harness.cli import main
from harness.compare import compare, load_side, render_text
from harness.statediff import coalesce


def _run(kind: str, root: Path, name: str = "rec-x") -> Path:
    res = record(kind, root, name=name)
    assert res.artifacts is not None
    return res.artifacts


def _mappings(run_dir: Path, change: Any) -> None:
    """Apply *change* to the mapping rows of the last check's first VM in slat.json."""
    edit_json(run_dir / "slat.json", lambda d: change(d["vms"][0]["mappings"]))


def test_two_clean_runs_compare_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    _run("pass", tmp_path / "base")
    _run("pass", tmp_path / "new")
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "verdicts: 0 changed, 1 unchanged" in out
    assert "findings: 0 new, 0 gone, 0 still there" in out
    assert "0 difference(s)" in out and "no regression" in out
    assert "L1 kernel 6.1.0-fake" in out and "accelerator tcg" in out


def test_an_injected_corruption_is_a_new_finding_and_a_regression(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run("pass", tmp_path / "base")
    bad = _run("fail", tmp_path / "new")
    sig = json.loads((bad / "findings.json").read_text())[0]["signature"]
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    assert f"new   {sig} wrong_frame in w1/vm0 at GPA 0x2000 (level 1)" in out
    assert "rec-x: passed (pass) -> failed (fail)  REGRESSED" in out
    assert "REGRESSED: 2 item(s)" in out
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new"),
                 "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in data["findings"]["new"]] == [sig]
    assert data["scenarios"][0]["regressed"] and data["exit_status"] == 1


def test_a_fixed_finding_is_gone_and_no_regression(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = _run("fail", tmp_path / "base")
    _run("pass", tmp_path / "new")
    sig = json.loads((bad / "findings.json").read_text())[0]["signature"]
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert f"gone  {sig}" in out and "1 gone" in out
    assert "rec-x: failed (fail) -> passed (pass)" in out and "REGRESSED" not in out


def test_the_same_finding_on_both_sides_is_still_there(tmp_path: Path) -> None:
    _run("fail", tmp_path / "base")
    _run("fail", tmp_path / "new")
    cmp = compare(load_side(tmp_path / "base"), load_side(tmp_path / "new"))
    assert len(cmp.kept_findings) == 1 and not cmp.new_findings and not cmp.gone_findings
    assert cmp.exit_status == 0      # failing as before: nothing got worse


def test_a_negative_scenarios_expected_findings_are_no_news(tmp_path: Path) -> None:
    """An xfailed run (a negative scenario failing as it expects) on the new side, or on
    one side only, is no regression; had it failed otherwise, its findings would be."""
    _run("pass", tmp_path / "base", "smoke")
    _run("pass", tmp_path / "new", "smoke")
    _run("xfail", tmp_path / "new", "inject")
    cmp = compare(load_side(tmp_path / "base"), load_side(tmp_path / "new"))
    assert cmp.exit_status == 0 and not cmp.new_findings, cmp.regressions
    _run("fail", tmp_path / "new2", "inject")              # the same findings, unexpected
    _run("pass", tmp_path / "new2", "smoke")
    cmp = compare(load_side(tmp_path / "base"), load_side(tmp_path / "new2"))
    assert cmp.exit_status == 1 and len(cmp.new_findings) == 1


def test_verdict_changes_and_scenarios_on_one_side(tmp_path: Path) -> None:
    _run("pass", tmp_path / "base", "both")
    _run("pass", tmp_path / "base", "gone")
    _run("error", tmp_path / "new", "both")
    _run("skip", tmp_path / "new", "added")
    cmp = compare(load_side(tmp_path / "base"), load_side(tmp_path / "new"))
    said = {v.scenario: (v.changed, v.regressed) for v in cmp.scenarios}
    assert said == {"both": (True, True), "gone": (True, False), "added": (True, False)}
    text = render_text(cmp)
    assert "gone: passed (pass) -> not run" in text
    assert "added: not run -> skipped (skip)" in text
    assert "both: passed (pass) -> failed (error)  REGRESSED" in text


def test_a_scenario_only_in_the_new_run_that_fails_is_a_regression(tmp_path: Path) -> None:
    _run("pass", tmp_path / "base", "old")
    _run("error", tmp_path / "new", "added")
    cmp = compare(load_side(tmp_path / "base"), load_side(tmp_path / "new"))
    assert cmp.exit_status == 1 and "worse: added: not run -> failed (error)" in \
        cmp.regressions


@pytest.mark.parametrize("change, words", [
    (lambda m: m[1].update(size="0x200000", level=2), "GPA 0x2000-0x3000: 4K rwx"),
    (lambda m: m[0].update(w=False), "GPA 0x0-0x1000: 4K rwx memtype 0 -> 4K r-x memtype 0"),
    (lambda m: m[0].update(memtype=6), "4K rwx memtype 0 -> 4K rwx memtype 6"),
    (lambda m: m.pop(1), "GPA 0x2000-0x3000: 4K rwx memtype 0 -> not mapped"),
])
def test_a_different_mapping_is_a_state_difference(tmp_path: Path, change: Any,
                                                   words: str) -> None:
    base = _run("pass", tmp_path / "base")
    new = copy_run(base, tmp_path / "new")
    _mappings(new, change)
    cmp = compare(load_side(tmp_path / "base"), load_side(tmp_path / "new"))
    assert cmp.state and words in render_text(cmp)
    assert all(c.scenario == "rec-x" and c.vm == "w1/vm0" for c in cmp.state)
    assert cmp.exit_status == 0        # a different layout alone is no regression


def test_host_addresses_alone_are_no_state_difference(tmp_path: Path) -> None:
    base = _run("pass", tmp_path / "base")
    new = copy_run(base, tmp_path / "new")

    def move(rows: list[dict[str, Any]]) -> None:
        for i, m in enumerate(rows):
            m.update(hpa=hex(0x7770000 + 0x1000 * i), raw=hex(0x7770e07), table="0x99000",
                     entry=hex(0x99000 + 8 * i), accessed=True, dirty=True)
    _mappings(new, move)
    cmp = compare(load_side(tmp_path / "base"), load_side(tmp_path / "new"))
    assert cmp.state == () and cmp.exit_status == 0
    assert "0 difference(s)" in render_text(cmp)


def test_leaves_coalesce_into_ranges(tmp_path: Path) -> None:
    from harness.rundir import load_slat
    base = _run("pass", tmp_path / "base")
    slat = load_slat(base)
    assert slat is not None
    rows = slat["vms"][0]["mappings"]
    assert [r.text() for r in coalesce(rows)] == \
        ["GPA 0x0-0x1000: 4K rwx memtype 0", "GPA 0x2000-0x4000: 4K rwx memtype 0"]


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "result.json").unlink(), "result.json"),
    (lambda d: (d / "result.json").write_text("{"), "result.json:1: not JSON"),
    (lambda d: (d / "slat.json").write_text('{"vms": [{"vm": "x"}], "checks": [1]}'),
     "slat.json: not a slatcheck state"),
])
def test_bad_input_is_exit_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             damage: Any, words: str) -> None:
    _run("pass", tmp_path / "base")
    new = _run("pass", tmp_path / "new")
    damage(new)
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert words in err and str(tmp_path / "new") in err


def test_the_newest_of_several_runs_of_a_scenario_stands_for_it(tmp_path: Path) -> None:
    old = _run("fail", tmp_path / "base")
    edit_json(old / "result.json",
              lambda d: d["provenance"].update(timestamp="2020-01-01T00:00:00+00:00"))
    newer = _run("pass", tmp_path / "base")
    assert newer.name == "rec-x-2"
    side = load_side(tmp_path / "base")
    assert [(r.result.name, r.result.verdict) for r in side] == [("rec-x", "pass")]
