"""The CI examples under docs/ci/ work: their jobs' shell lines run as written (the
setup and the CI system's own actions left out), with a ``.venv/bin/slatcheck`` that
runs every scenario on the scripted machine: the shards cover every scenario once, the
merge job gives back one run's summary and JUnit, and the history says what is new."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from recorded import INJECT, KINDS, NEGATIVE, SCENARIO

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "docs" / "ci"
WRAPPER = f"""#!/bin/sh
exec {sys.executable} -c 'import sys; sys.path.insert(0, "{HERE}"); import kinds; \\
sys.exit(kinds.main_on_fakes(sys.argv[1:]))' "$@"
"""
SETUP = "sh .ci/setup --no-smoke"


def _checkout(tmp: Path) -> Path:
    """A work tree with scenarios of every recorded kind and the scripted slatcheck."""
    work = tmp / "work"
    (work / "scenarios" / "linux").mkdir(parents=True)
    for kind in KINDS:
        (work / "scenarios" / "linux" / f"rec-{kind}.yaml").write_text(SCENARIO.format(
            name=f"rec-{kind}", expect=NEGATIVE if kind == "xfail" else "",
            inject=INJECT if kind in ("xfail", "fail") else ""))
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "slatcheck").write_text(WRAPPER)
    (work / ".venv" / "bin" / "slatcheck").chmod(0o755)
    return work


def _sh(work: Path, lines: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = "\n".join(":" if ln.strip().startswith(SETUP) else ln.replace(SETUP, ":")
                       for ln in lines)
    return subprocess.run(["sh", "-ec", script], cwd=work, env=env, text=True,
                          capture_output=True, timeout=300)


def _flat(items: list[Any]) -> list[str]:
    return [x for i in items for x in (_flat(i) if isinstance(i, list) else [i])]


def _check(work: Path, merge: subprocess.CompletedProcess[str]) -> None:
    assert merge.returncode == 1, merge.stdout + merge.stderr   # new tonight: rec-fail
    assert "NEW" in merge.stdout and "rec-fail" in merge.stdout
    summary = json.loads((work / "merged" / "summary.json").read_text())
    assert sorted(r["scenario"] for r in summary["scenarios"]) == \
        sorted(f"rec-{k}" for k in KINDS)
    assert summary["outcomes"] == {"passed": 1, "xfailed": 1, "failed": 2, "skipped": 1}
    assert (work / "merged" / "junit.xml").read_text().count("<testcase") == len(KINDS)


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os
    return {"PATH": os.environ["PATH"], "HOME": str(Path.home())} | extra


def test_the_gitlab_pipeline(tmp_path: Path) -> None:
    ci = yaml.safe_load((DOCS / "gitlab-ci.yml").read_text())
    work = _checkout(tmp_path)
    base = _env({k: str(v) for k, v in ci["variables"].items()})
    total = ci["nightly"]["parallel"]
    for i in range(1, total + 1):
        res = _sh(work, _flat(ci["nightly"]["script"]),
                  base | {"CI_NODE_INDEX": str(i), "CI_NODE_TOTAL": str(total)})
        assert res.returncode in (0, 1, 3), res.stderr      # a failing shard is a result
    assert ci["merge"]["needs"] == ["nightly"] and ci["merge"]["when"] == "always"
    _check(work, _sh(work, _flat(ci["merge"]["script"]), base))


def _steps(job: dict[str, Any], shard: int, total: int) -> list[str]:
    out = []
    for step in job["steps"]:
        if "run" in step:
            out += step["run"].replace("${{ matrix.shard }}", str(shard)).replace(
                "${{ strategy.job-total }}", str(total)).splitlines()
    return out


def test_the_github_workflow(tmp_path: Path) -> None:
    wf = yaml.safe_load((DOCS / "github-actions.yml").read_text())
    work = _checkout(tmp_path)
    base = _env(wf["env"])
    shards = wf["jobs"]["nightly"]["strategy"]["matrix"]["shard"]
    for i in shards:
        res = _sh(work, _steps(wf["jobs"]["nightly"], i, len(shards)), base)
        assert res.returncode in (0, 1, 3), res.stderr
    merge = wf["jobs"]["merge"]
    assert merge["needs"] == "nightly" and merge["if"] == "always()"
    _check(work, _sh(work, _steps(merge, 0, len(shards)), base))


@pytest.mark.parametrize("name", ["gitlab-ci.yml", "github-actions.yml"])
def test_the_examples_are_documented(name: str) -> None:
    assert f"docs/ci/{name}" in (HERE.parents[1] / "docs" / "nightly.md").read_text()
