"""Scenario files of every recorded kind run together through the CLI on one scripted
machine that fails each as its kind says (tests of shards, merge and JUnit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes import FakeWorld
from recorded import INJECT, KINDS, NEGATIVE, SCENARIO

from harness import cli
from harness.errors import InfraError, SkipScenario
from harness.machines.base import MachineConfig

__all__ = ["KindWorld", "scenario_files", "run"]


class KindWorld(FakeWorld):
    """The scripted machine, failing as each recorded kind says (by its run directory)."""

    def machine(self, config: MachineConfig) -> Any:
        name = config.artifacts.name
        self.observe_error = SkipScenario("bhyve needs NRIP save") if "skip" in name else \
            InfraError("lost the GDB session") if "error" in name else None
        return super().machine(config)


def scenario_files(src: Path, copies: int = 2) -> list[Path]:
    """*copies* scenario files of every recorded kind."""
    src.mkdir(parents=True, exist_ok=True)
    out = []
    for n in range(copies):
        for kind in KINDS:
            path = src / f"rec-{kind}-{n}.yaml"
            path.write_text(SCENARIO.format(
                name=f"rec-{kind}-{n}", expect=NEGATIVE if kind == "xfail" else "",
                inject=INJECT if kind in ("xfail", "fail") else ""))
            out.append(path)
    return out


def run(files: list[Path], art: Path, *extra: str) -> int:
    world = KindWorld(touched=(0x2000, 0x3000))
    return cli.main(["run", *map(str, files), "-q", "--artifacts", str(art),
                     "--junit", str(art / "junit.xml"), *extra],
                    services=world.services(art.parent))


def main_on_fakes(argv: list[str]) -> int:
    """``slatcheck ARGV`` with every scenario on the scripted machine (CI examples' tests)."""
    world = KindWorld(touched=(0x2000, 0x3000))
    return cli.main(argv, services=world.services(Path.cwd() / ".fake"))
