"""The outcome of one scenario run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.findings import Finding

__all__ = ["ScenarioResult", "VERDICTS", "matches_expectation"]

# verdict -> exit status contribution
VERDICTS = {"pass": 0, "fail": 1, "panic": 1, "timeout": 1, "interrupted": 1,
            "scenario-error": 2, "error": 3}


@dataclass
class ScenarioResult:
    """Verdict, findings and where the evidence is."""

    name: str
    path: Path
    verdict: str = "error"
    message: str = ""
    failed_step: str = ""
    findings: list[Finding] = field(default_factory=list)
    artifacts: Path | None = None
    duration: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=lambda: {"verdict": "pass"})

    @property
    def exit_status(self) -> int:
        return VERDICTS.get(self.verdict, 3)

    def summary(self, max_findings: int = 5) -> str:
        """What a person reads first: verdict, failing step, first findings."""
        lines = [f"{self.name}: {self.verdict.upper()}"
                 + (f" in {self.failed_step}" if self.failed_step else "")]
        if self.message:
            msg = self.message.splitlines()
            lines += [f"  {m}" for m in msg[:12]]
            if len(msg) > 12:
                lines.append(f"  ... {len(msg) - 12} more lines in result.json")
        for f in self.findings[:max_findings]:
            lines.append(f"  - {f.summary()}")
        if len(self.findings) > max_findings:
            lines.append(f"  ... {len(self.findings) - max_findings} more in findings.json")
        if self.artifacts:
            lines.append(f"  artifacts: {self.artifacts}")
        return "\n".join(lines)


def matches_expectation(res: ScenarioResult) -> tuple[bool, str]:
    """Whether the run came out as the scenario's ``expect`` block says.

    A negative scenario (``verdict: fail``) matches only when every expected
    finding kind (and GPA, where given) is among the findings.
    """
    want = res.expect.get("verdict", "pass")
    if res.verdict != want:
        return False, f"expected verdict {want}, got {res.verdict}"
    for exp in res.expect.get("findings", []):
        gpa = exp.get("gpa")
        gpa = int(gpa, 16) if isinstance(gpa, str) else gpa
        hit = [f for f in res.findings if f.kind == exp["kind"]
               and (gpa is None or (f.gpa is not None
                                    and f.gpa <= gpa < (f.end or f.gpa + 4096)))]
        if not hit:
            where = "" if gpa is None else f" at {gpa:#x}"
            return False, f"expected a {exp['kind']} finding{where}; none reported"
    return True, "as expected"
