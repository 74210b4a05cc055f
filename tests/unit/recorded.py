"""Recorded runs made by the real runner on the scripted machine (fakes.FakeWorld).

:func:`record` runs one of :data:`KINDS` into an artifacts root and returns its
result; the run directory holds exactly what ``slatcheck run`` writes (result.json,
findings.json, slat.json, console.log ...), so the readers of recorded runs
(``report``, ``compare``, ``merge``, the history) are tested on real output.

``pass``: a clean run.  ``xfail``: a negative scenario (an injected wrong frame it
expects).  ``fail``: the same injection without the expectation (a finding at GPA
0x2000).  ``skip``: the combination cannot run (SkipScenario).  ``error``: GDB lost.
"""

from __future__ import annotations

from pathlib import Path

from fakes import FakeWorld

from harness.errors import InfraError, SkipScenario
from harness.result import ScenarioResult
from harness.runner import run_scenario
from harness.scenario import load_scenario

__all__ = ["KINDS", "record", "record_all"]

SCENARIO = """\
name: {name}
guest: {{os: linux, image: linux-amd64}}
{expect}
steps:
  - boot: {{}}
  - workload:
      slots: [{{gpa: 0x0, size: 64K}}]
      touch: [{{gpa: 0x2000, access: w}}, {{gpa: 0x3000, access: w}}]
{inject}  - check: {{vms: 1}}
  - release: {{}}
  - check: {{vms: 0}}
"""
INJECT = "  - inject: {kind: frame, gpa: 0x2000}\n"
NEGATIVE = "expect: {verdict: fail, findings: [{kind: wrong_frame, gpa: 0x2000}]}"

KINDS = ("pass", "xfail", "fail", "skip", "error")


def record(kind: str, root: Path, name: str | None = None, workdir: Path | None = None
           ) -> ScenarioResult:
    """Run the *kind* scenario (named *name*, default ``rec-<kind>``) into *root*."""
    name = name or f"rec-{kind}"
    workdir = workdir or root.parent / f".{root.name}-src"
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    path.write_text(SCENARIO.format(
        name=name, expect=NEGATIVE if kind == "xfail" else "",
        inject=INJECT if kind in ("xfail", "fail") else ""))
    world = FakeWorld(touched=(0x2000, 0x3000))
    if kind == "skip":
        world.observe_error = SkipScenario("bhyve needs NRIP save, which TCG lacks")
    elif kind == "error":
        world.observe_error = InfraError("lost the GDB session")
    return run_scenario(load_scenario(path), root, services=world.services(workdir))


def record_all(root: Path) -> list[ScenarioResult]:
    """One recorded run of every kind, in :data:`KINDS` order."""
    return [record(k, root) for k in KINDS]
