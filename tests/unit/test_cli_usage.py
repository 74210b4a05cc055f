"""The command line as a user meets it: usage errors are exit 2, a closed pipe is no crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_image_is_a_usage_error_listing_the_recipes(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["images", "build", "linux-amd65"]) == 2
    err = capsys.readouterr().err
    assert "no image recipe 'linux-amd65'" in err and "linux-amd64" in err


def test_a_reader_that_leaves_early_is_no_traceback() -> None:
    """``slatcheck images list | head -1``: the pipe closes under the writer (``true``
    closes it before the first line, every time)."""
    proc = subprocess.run(f"{sys.executable} -c 'from harness.cli import entry; entry()' "
                          "images list | true; echo status ${PIPESTATUS[0]}",
                          shell=True, executable="/bin/bash", cwd=ROOT, text=True,
                          capture_output=True, timeout=120)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "status 0"


def test_the_help_says_what_the_tool_is(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Differential verification of hypervisor nested paging" in out and "``" not in out


def test_a_signal_while_the_harness_is_imported_ends_as_interrupted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """harness.launch holds SIGINT/SIGTERM from the first line; main then ends the
    command as interrupted (exit 1), nothing run, no traceback."""
    import os
    import signal

    from harness.deadline import Held
    held = Held()
    before = signal.signal(signal.SIGTERM, held)
    try:
        os.kill(os.getpid(), signal.SIGTERM)          # as if it came during the imports
        assert held.came == [signal.SIGTERM]
        scenario = tmp_path / "s.yaml"
        scenario.write_text("name: s\n")
        assert cli.main(["validate", str(scenario)]) == 1
    finally:
        signal.signal(signal.SIGTERM, before)
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err and "s.yaml" not in err


def test_the_console_script_and_python_m_start_in_the_launcher() -> None:
    import tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["scripts"]["slatcheck"] == "harness.launch:entry"
    proc = subprocess.run([sys.executable, "-m", "harness", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("slatcheck ")
