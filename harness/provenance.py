"""Where a run came from: slatcheck's version and commit, the host, the time, the command.

The machine's part (emulator, version, accelerator, CPU) comes from the machine
backend's :meth:`~harness.machines.base.Machine.describe`; the image's from its
manifest.  :func:`host_provenance` is what is known before anything boots.

>>> p = host_provenance(["slatcheck", "run", "x.yaml"])
>>> sorted(p), p["command"]
(['command', 'host', 'slatcheck', 'timestamp'], ['slatcheck', 'run', 'x.yaml'])
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["host_provenance", "slatcheck_version", "git_commit", "cpu_model", "flatten"]

CHECKOUT = Path(__file__).resolve().parents[1]


@cache
def slatcheck_version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("slatcheck")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@cache
def git_commit() -> str | None:
    """The checkout's commit (``-dirty`` with local changes), or None outside a checkout."""
    if not (CHECKOUT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


@cache
def cpu_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def host_provenance(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """slatcheck, host, UTC time and command line of this run."""
    return {
        "slatcheck": {"version": slatcheck_version(), "commit": git_commit()},
        "host": {"kernel": platform.release(), "cpu": cpu_model(),
                 "python": platform.python_version()},
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(sys.argv if argv is None else argv),
    }


def command_line(argv: Sequence[str]) -> list[str]:
    """The command as someone else would type it: the program by its name, not by this
    machine's path to it (a reproducer pasted into a mail must run elsewhere).

    >>> command_line(["/home/me/src/.venv/bin/slatcheck", "run", "x.yaml"])
    ['slatcheck', 'run', 'x.yaml']
    >>> command_line(["/src/harness/__main__.py", "run"])
    ['slatcheck', 'run']
    """
    if not argv:
        return []
    prog = Path(argv[0])
    if prog.name == "slatcheck" or prog.parts[-2:] == ("harness", "__main__.py"):
        return ["slatcheck", *argv[1:]]
    return list(argv)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested provenance as flat ``a.b`` keys (JUnit properties).

    >>> flatten({"host": {"kernel": "6.1"}, "command": ["a", "b"]})
    {'host.kernel': '6.1', 'command': 'a b'}
    """
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = " ".join(map(str, value))
        elif value is not None:
            out[name] = str(value)
    return out
