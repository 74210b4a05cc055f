"""Recorded runs read back: the same results, findings and signatures the run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recorded import record, record_all

from harness.errors import ScenarioError
from harness.rundir import load_result, load_results, load_slat, run_dirs


def test_every_kind_of_run_reads_back_as_it_was(tmp_path: Path) -> None:
    live = record_all(tmp_path / "art")
    assert [r.outcome for r in live] == ["passed", "xfailed", "failed", "skipped", "failed"]
    back = load_results([tmp_path / "art"])
    assert [r.name for r in back] == sorted(r.name for r in live)
    by_name = {r.name: r for r in back}
    for r in live:
        b = by_name[r.name]
        assert (b.verdict, b.outcome, b.status, b.failed_step, b.hypervisor) == \
            (r.verdict, r.outcome, r.status, r.failed_step, r.hypervisor)
        assert b.findings_json() == r.findings_json()
        assert b.provenance == json.loads(json.dumps(r.provenance))
        assert b.artifacts == r.artifacts


def test_a_failing_run_keeps_its_finding_and_signature(tmp_path: Path) -> None:
    res = record("fail", tmp_path / "art")
    assert res.artifacts is not None
    back = load_result(res.artifacts)
    f = back.findings[0]
    assert (f.kind, f.vm, f.gpa, f.level) == ("wrong_frame", "w1/vm0", 0x2000, 1)
    rows = json.loads((res.artifacts / "findings.json").read_text())
    assert rows[0]["signature"] == back.findings_json()[0]["signature"]
    slat = load_slat(res.artifacts)
    assert slat is not None and slat["scenario"] == "rec-fail"


def test_a_run_dir_a_root_and_duplicates(tmp_path: Path) -> None:
    a = record("pass", tmp_path / "art")
    assert a.artifacts is not None
    assert run_dirs([a.artifacts, tmp_path / "art"]) == [a.artifacts]


@pytest.mark.parametrize("damage, words", [
    (lambda d: (d / "result.json").unlink(), "neither a run directory"),
    (lambda d: (d / "result.json").write_text("{\n  \"scenario\": 1,\n"), "not JSON"),
    (lambda d: (d / "result.json").write_text('{"scenario": "x"}'), "field 'file'"),
    (lambda d: (d / "findings.json").write_text('[{"gpa": "0x1"}]'), "not a findings list"),
])
def test_damaged_runs_name_the_file_and_field(tmp_path: Path, damage: object,
                                              words: str) -> None:
    res = record("fail", tmp_path / "art")
    assert res.artifacts is not None
    damage(res.artifacts)  # type: ignore[operator]
    with pytest.raises(ScenarioError) as e:
        load_results([res.artifacts])
    assert words in str(e.value) and str(res.artifacts) in str(e.value)

