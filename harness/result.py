"""The outcome of one scenario run, and whether it is the outcome the scenario expects."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import exit_status_of
from harness.findings import Finding
from harness.scenario.spec import Expect
from harness.signature import signature

__all__ = ["ScenarioResult", "matches_expectation"]


@dataclass
class ScenarioResult:
    """Verdict, findings, where the evidence is, and where it all came from."""

    name: str
    path: Path
    hypervisor: str = ""               # the scenario's hypervisor (part of each finding's
    verdict: str = "error"             # signature, harness.signature)
    message: str = ""
    failed_step: str = ""
    findings: list[Finding] = field(default_factory=list)
    artifacts: Path | None = None
    duration: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    expect: Expect = field(default_factory=Expect)
    stop: bool = False                 # Ctrl-C or SIGTERM came: run nothing after this
    repeat: dict[str, Any] | None = None   # a repeated run: rate, seeds, first failure

    @property
    def exit_status(self) -> int:
        """What the raw verdict contributes to the exit status (0 pass/skip ... 3 error)."""
        return exit_status_of(self.verdict)

    @property
    def as_expected(self) -> bool:
        """Whether the run came out as the scenario's ``expect`` says."""
        return matches_expectation(self)[0]

    @property
    def status(self) -> int:
        """The exit status this run gives ``slatcheck run``: 0 when it came out as expected.

        A negative scenario that fails with its expected findings counts as passed;
        one that passes, or fails otherwise, counts as failed (at least 1).
        """
        if self.verdict == "skip" or self.as_expected:
            return 0
        return max(1, self.exit_status)

    @property
    def outcome(self) -> str:
        """``passed``, ``xfailed`` (failed as expected), ``skipped`` or ``failed``."""
        if self.verdict == "skip":
            return "skipped"
        if not self.as_expected:
            return "failed"
        return "passed" if self.verdict == "pass" else "xfailed"

    def summary(self, max_findings: int = 5) -> str:
        """What a person reads first: verdict, failing step, first findings."""
        expected = "" if self.verdict in ("pass", "skip") or not self.as_expected \
            else " (as expected)"
        lines = [f"{self.name}: {self.verdict.upper()}{expected}"
                 + (f" in {self.failed_step}" if self.failed_step else "")]
        if self.message:
            msg = self.message.splitlines()
            lines += [f"  {m}" for m in msg[:12]]
            if len(msg) > 12:
                lines.append(f"  ... {len(msg) - 12} more lines in result.json")
        if not self.as_expected and self.verdict != "skip" and self.expect.verdict != "pass":
            lines.append(f"  expected: {matches_expectation(self)[1]}")
        for f in self.findings[:max_findings]:
            lines.append(f"  - {f.summary()}")
        if len(self.findings) > max_findings:
            lines.append(f"  ... {len(self.findings) - max_findings} more in findings.json")
        if self.repeat is not None:
            lines.append(f"  {self.repeat['text']}")
        if self.artifacts:
            lines.append(f"  artifacts: {self.artifacts}")
        return "\n".join(lines)

    def findings_json(self) -> list[dict[str, Any]]:
        """The ``findings.json`` form: each finding with its signature's id and title."""
        out = []
        for f in self.findings:
            sig = signature(self.name, self.hypervisor, f)
            out.append(f.to_json() | {"signature": sig.id, "title": sig.title})
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``result.json`` form."""
        return {"scenario": self.name, "file": str(self.path), "hypervisor": self.hypervisor,
                "verdict": self.verdict,
                "outcome": self.outcome, "as_expected": self.as_expected,
                "message": self.message, "failed_step": self.failed_step,
                "duration": round(self.duration, 3),
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "findings": len(self.findings), "provenance": self.provenance,
                "expect": {"verdict": self.expect.verdict,
                           "findings": [asdict(e) for e in self.expect.findings]},
                "properties": self.properties} | ({"repeat": self.repeat} if self.repeat
                                                  else {})


def matches_expectation(res: ScenarioResult) -> tuple[bool, str]:
    """Whether the run came out as the scenario's ``expect`` block says, and why not.

    A negative scenario (``verdict: fail``) matches only when every expected
    finding kind (at its GPA and VM, where given) is among the findings.
    """
    want = res.expect.verdict
    if res.verdict != want:
        return False, f"expected verdict {want}, got {res.verdict}"
    for exp in res.expect.findings:
        label = exp.vm_label
        hit = [f for f in res.findings if f.kind == exp.kind
               and (label is None or f.vm == label)
               and (exp.gpa is None or (f.gpa is not None
                                        and f.gpa <= exp.gpa < (f.end or f.gpa + 4096)))]
        if not hit:
            where = "" if exp.gpa is None else f" at {exp.gpa:#x}"
            vm = "" if label is None else f" in {label}"
            return False, f"expected a {exp.kind} finding{where}{vm}; none reported"
    return True, "as expected"
