"""JUnit for strict consumers: the CLI's file and a merged one validate against our own
statement of the strict JUnit schema (tests/data/junit-strict.xsd); junit-xml's own
output does not, so the check is shown to catch what the adjustment removes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema
from fakes import FakeWorld
from junit_xml import TestCase as JCase
from junit_xml import TestSuite as JSuite
from junit_xml import to_xml_report_string
from kinds import run, scenario_files
from recorded import INJECT, SCENARIO, record_all

from harness import cli
from harness.junit import junit_text, strict_junit
from harness.repeat import RepeatPlan, run_repeated
from harness.scenario import load_scenario

SCHEMA = Path(__file__).resolve().parents[1] / "data" / "junit-strict.xsd"


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA))


def test_every_outcome_validates_with_timestamp_hostname_and_properties(
        tmp_path: Path, schema: xmlschema.XMLSchema) -> None:
    results = record_all(tmp_path / "art")
    text = junit_text(results, hostname="ci-host")
    schema.validate(text)
    suite = ET.fromstring(text).find("testsuite")
    assert suite is not None and suite.get("hostname") == "ci-host"
    assert suite.get("timestamp") == min(
        str(r.provenance["timestamp"]) for r in results).removesuffix("+00:00")
    assert [c.get("name") for c in suite.iter("testcase")] == [r.name for r in results]
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["rec-pass.file"] == str(results[0].path)
    assert props["rec-pass.image.kernel_release"] == "6.1.0-fake"


def test_the_unadjusted_junit_xml_output_is_rejected(schema: xmlschema.XMLSchema) -> None:
    case = JCase("s", classname="slatcheck.linux", file="s.yaml", elapsed_sec=1.0)
    raw = to_xml_report_string([JSuite("slatcheck", [case], hostname="h",
                                          timestamp="2026-12-01T10:00:00")])
    errors = [str(e.reason) for e in schema.iter_errors(raw)]
    assert any("disabled" in e for e in errors) and any("'file'" in e for e in errors)
    schema.validate(strict_junit(raw))
    tiny = JCase("t", classname="slatcheck.linux", elapsed_sec=5e-05)   # str(): '5e-05'
    raw = to_xml_report_string([JSuite("slatcheck", [tiny], hostname="h",
                                       timestamp="2026-12-01T10:00:00")])
    assert 'time="5e-05"' in raw
    assert any("5e-05" in str(e) for e in schema.iter_errors(raw))
    assert 'time="0.000"' in strict_junit(raw) and schema.is_valid(strict_junit(raw))
    no_stamp = strict_junit(to_xml_report_string([JSuite("slatcheck", [case])]))
    assert not schema.is_valid(no_stamp)            # timestamp and hostname are required


def test_the_cli_and_a_merged_file_validate(tmp_path: Path,
                                            schema: xmlschema.XMLSchema) -> None:
    files = scenario_files(tmp_path / "src", copies=1)
    run(files, tmp_path / "all")
    for i in (1, 2):
        run(files, tmp_path / f"s{i}", "--shard", f"{i}/2")
    cli.main(["merge", str(tmp_path / "m"), str(tmp_path / "s1"), str(tmp_path / "s2")])
    for path in (tmp_path / "all" / "junit.xml", tmp_path / "m" / "junit.xml"):
        schema.validate(str(path))
        assert len(ET.parse(path).getroot().findall(".//testcase")) == len(files)


def test_a_repeated_run_has_a_case_per_iteration(tmp_path: Path,
                                                schema: xmlschema.XMLSchema) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(SCENARIO.format(name="rep", expect="", inject=INJECT))
    res = run_repeated(load_scenario(path), tmp_path / "art", RepeatPlan(count=2),
                       progress=lambda line: None,
                       services=FakeWorld(touched=(0x2000, 0x3000)).services(tmp_path))
    text = junit_text([res])
    schema.validate(text)
    got = [(c.get("name"), c.find("failure") is not None)
           for c in ET.fromstring(text).iter("testcase")]
    assert got == [("rep", True), ("rep#1", True), ("rep#2", True)]
