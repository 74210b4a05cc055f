"""The iterations of a repeated run, read back from its ``iter-NNNN/`` directories."""

from __future__ import annotations

from harness.result import ScenarioResult
from harness.rundir import RESULT, load_result

__all__ = ["iterations_of"]


def iterations_of(res: ScenarioResult) -> list[ScenarioResult]:
    """Each iteration's result (named ``scenario#N``), in order; [] for a single run."""
    if not res.repeat or res.artifacts is None or not res.artifacts.is_dir():
        return []
    dirs = sorted(d for d in res.artifacts.glob("iter-*") if (d / RESULT).is_file())
    return [load_result(d) for d in dirs]
