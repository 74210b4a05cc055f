"""slatcheck installed into a fresh virtualenv outside the checkout (``pip install <checkout>``,
not editable): it lists and builds images from its packaged recipes, runs the smoke
scenario, and its pytest plugin collects and runs a copied scenarios directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "linux" / "kvm-npt-smoke.yaml"


def run(cmd: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with slatcheck and its test extra installed from the checkout."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env)
    res = run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
               str(ROOT / "constraints.txt"), f"{ROOT}[test]"], cwd=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return env


def test_installed_package_lists_and_runs_outside_the_checkout(installed: Path,
                                                               tmp_path: Path) -> None:
    bin_ = installed / "bin"
    where = run([str(bin_ / "python"), "-c", "import harness, sys; print(harness.__file__)"],
                cwd=tmp_path)
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout
    images = run([str(bin_ / "slatcheck"), "images", "list"], cwd=tmp_path)
    assert images.returncode == 0 and "linux-amd64" in images.stdout, images.stderr
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    shutil.copy(SMOKE, scenarios / SMOKE.name)
    res = run([str(bin_ / "slatcheck"), "run", str(scenarios / SMOKE.name), "--artifacts",
               str(tmp_path / "art"), "-q"], cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((tmp_path / "art" / "kvm-npt-smoke" / "result.json").read_text())
    assert result["verdict"] == "pass"
    assert result["provenance"]["slatcheck"]["commit"] is None     # not run from a checkout
    test = run([str(bin_ / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "scenarios", "--slat-artifacts", str(tmp_path / "py")], cwd=tmp_path)
    assert test.returncode == 0, test.stdout[-3000:]
    assert "1 passed" in test.stdout
    assert sys.executable != str(bin_ / "python")
