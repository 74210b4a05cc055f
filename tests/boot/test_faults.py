"""Bad luck at run time, on a real QEMU: a full artifacts filesystem, Ctrl-C twice, SIGTERM.

Oracles: the exit status, the files left in the run directory, and the process table
and temporary directory (no QEMU or gdb left, no scratch directory left).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.boot

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scenarios" / "linux" / "kvm-npt-smoke.yaml"


def children_of(pid: int) -> list[int]:
    """Every live descendant of *pid* (from /proc)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in "ZX":
            kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A private TMPDIR: every scratch directory a run makes lands here."""
    d = Path(tempfile.mkdtemp(prefix="slc-faults-"))
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def slatcheck(args: list[str], tmpdir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pattern: str, proc: subprocess.Popen[str], limit: float = 300) -> str:
    """Read the child's output until a line holds *pattern*."""
    deadline = time.monotonic() + limit
    seen = ""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if pattern in line or not line:
            return seen
    raise AssertionError(f"no {pattern!r} within {limit} s:\n{seen}")


def test_ctrl_c_twice_and_sigterm_keep_the_artifacts_and_leave_nothing(scratch: Path) -> None:
    art = scratch / "art"
    proc = slatcheck(["run", str(SMOKE), "--artifacts", str(art), "--junit",
                      str(art / "j.xml")], scratch)
    wait_for("step 3 (workload)", proc)           # booted, a VM held
    family = children_of(proc.pid)
    assert family, "QEMU and gdb run under the harness"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)               # again, during clean-up
    proc.send_signal(signal.SIGTERM)              # and a TERM for good measure
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    result = json.loads((art / "kvm-npt-smoke" / "result.json").read_text())
    assert result["verdict"] == "interrupted"
    assert (art / "kvm-npt-smoke" / "console.log").stat().st_size > 0
    assert "<testcase" in (art / "j.xml").read_text()
    assert [p for p in family if Path(f"/proc/{p}").exists()
            and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"] \
        == []
    assert sorted(p.name for p in scratch.iterdir()) == ["art"]   # no scratch left


def test_a_full_artifacts_filesystem_is_exit_3_without_traceback(scratch: Path) -> None:
    # a smoke run writes about 32 KB (console.log, rsp.log, slat.json): 16 KB fill up mid-run
    mnt = scratch / "full"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        proc = slatcheck(["run", str(SMOKE), "--artifacts", str(mnt), "-q"], scratch)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 3, out + err
        assert "Traceback" not in err and "Traceback" not in out
        leftovers = [p.name for p in mnt.rglob("*") if ".tmp" in p.name]
        assert leftovers == []
        assert sorted(p.name for p in scratch.iterdir()) == ["full"]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
