"""JUnit XML for CI systems (junit-xml), valid for strict consumers, provenance as properties.

junit-xml writes attributes that the Jenkins xunit plugin's JUnit schema forbids
(``disabled`` on ``testsuites`` and ``testsuite``, ``file`` on ``testcase``);
:func:`strict_junit` keeps only the attributes that schema allows, so Jenkins,
GitLab and the like all read the file.  The suite carries ``timestamp`` (the
earliest run's start, UTC, no offset) and ``hostname``.  One test case per scenario,
and one per iteration of a repeated run (``name#N``); a scenario's file and
provenance are suite properties prefixed with its name (the schema has no test
case properties).
"""

from __future__ import annotations

import datetime
import platform
import xml.etree.ElementTree as ET
from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from harness.iterations import iterations_of
from harness.result import ScenarioResult, matches_expectation

__all__ = ["write_junit", "junit_text", "strict_junit", "ALLOWED"]

# The attributes each element may carry (the Jenkins xunit plugin's junit-10 schema).
ALLOWED: dict[str, frozenset[str]] = {
    "testsuites": frozenset({"name", "time", "tests", "failures", "errors"}),
    "testsuite": frozenset({"name", "tests", "failures", "errors", "group", "time", "skipped",
                            "timestamp", "hostname", "id", "package", "file", "log", "url"}),
    "testcase": frozenset({"name", "time", "classname", "group"}),
}


def _case(res: ScenarioResult, classname: str) -> TestCase:
    """One test case: passed when the run came out as the scenario expects."""
    case = TestCase(name=res.name, classname=classname, elapsed_sec=res.duration)
    text = res.summary(max_findings=50)
    message = f"{res.verdict}: {res.message}"[:500]
    if res.outcome == "skipped":
        case.add_skipped_info(message=message, output=text)
    elif res.outcome == "failed" and res.verdict in ("error", "scenario-error"):
        case.add_error_info(message=message, output=text, error_type=res.verdict)
    elif res.outcome == "failed":
        why = matches_expectation(res)[1]
        case.add_failure_info(message=f"{message} ({why})"[:500], output=text,
                              failure_type=res.verdict)
    case.stdout = text
    return case


def _cases(res: ScenarioResult) -> list[TestCase]:
    """The scenario's case, then one per iteration of a repeated run."""
    classname = f"slatcheck.{res.path.parent.name}"
    return [_case(res, classname)] + [_case(it, classname) for it in iterations_of(res)]


def _timestamp(results: list[ScenarioResult]) -> str:
    """The earliest start among *results* (now if none says), UTC without an offset."""
    starts = []
    for res in results:
        try:
            starts.append(datetime.datetime.fromisoformat(str(res.provenance["timestamp"])))
        except (KeyError, ValueError):
            continue
    when = min(starts, default=datetime.datetime.now(datetime.UTC))
    if when.tzinfo is not None:
        when = when.astimezone(datetime.UTC).replace(tzinfo=None)
    return when.isoformat(timespec="seconds")


def _seconds(text: str) -> str:
    """A time as plain decimal seconds (``str(5e-05)`` is ``5e-05``, which strict
    schemas refuse); what is not a number is left as it is."""
    try:
        return f"{float(text):.3f}"
    except ValueError:
        return text


def strict_junit(text: str) -> str:
    """*text* (JUnit XML) with only the attributes the strict schema allows, and times
    in plain decimals (pure)."""
    root = ET.fromstring(text)
    for el in root.iter():
        allowed = ALLOWED.get(el.tag)
        if allowed is not None:
            for attr in [a for a in el.attrib if a not in allowed]:
                del el.attrib[attr]
        if "time" in el.attrib:
            el.set("time", _seconds(el.get("time", "")))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def junit_text(results: list[ScenarioResult], name: str = "slatcheck",
               hostname: str | None = None) -> str:
    """The JUnit XML of *results*: one suite, a case per scenario and per iteration.

    Properties: image hashes, package versions, guest kernel version, the scenario
    file and the artifact directory of each scenario (prefixed with its name).
    """
    props: dict[str, str] = {}
    for res in results:
        props[f"{res.name}.file"] = str(res.path)
        for k, v in sorted(res.properties.items()):
            props[f"{res.name}.{k}"] = v
        if res.artifacts:
            props[f"{res.name}.artifacts"] = str(res.artifacts)
    suite = TestSuite(name, [c for r in results for c in _cases(r)], properties=props,
                      hostname=hostname or platform.node(), timestamp=_timestamp(results))
    return strict_junit(to_xml_report_string([suite]))


def write_junit(results: list[ScenarioResult], path: Path, name: str = "slatcheck") -> None:
    """Write :func:`junit_text` of *results* to *path* atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(junit_text(results, name))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
