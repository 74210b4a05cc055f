"""JUnit XML for CI systems (junit-xml), with provenance as properties."""

from __future__ import annotations

from pathlib import Path

from junit_xml import TestCase, TestSuite, to_xml_report_string

from harness.artifacts import write_text
from harness.result import ScenarioResult, matches_expectation

__all__ = ["write_junit", "junit_text"]


def _case(res: ScenarioResult) -> TestCase:
    """One test case: passed when the run came out as the scenario expects."""
    case = TestCase(name=res.name, classname=f"slatcheck.{res.path.parent.name}",
                    file=str(res.path), elapsed_sec=res.duration)
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


def junit_text(results: list[ScenarioResult], name: str = "slatcheck") -> str:
    """One test suite with a test case per scenario, as XML text.

    Properties: image hashes, package versions, guest kernel version and the
    artifact directory of each scenario (prefixed with the scenario name).
    """
    props: dict[str, str] = {}
    for res in results:
        for k, v in sorted(res.properties.items()):
            props[f"{res.name}.{k}"] = v
        if res.artifacts:
            props[f"{res.name}.artifacts"] = str(res.artifacts)
    suite = TestSuite(name, [_case(r) for r in results], properties=props)
    return str(to_xml_report_string([suite], prettyprint=True))


def write_junit(results: list[ScenarioResult], path: Path, name: str = "slatcheck") -> None:
    """:func:`junit_text` written to *path* atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, junit_text(results, name))
