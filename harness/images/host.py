"""Host tools the image builder runs, and the Debian packages that provide them."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import InfraError

__all__ = ["TOOL_PACKAGES", "require_tool", "run_tool"]

# Command -> Debian package(s) that install it.
TOOL_PACKAGES: dict[str, tuple[str, ...]] = {
    "apt-get": ("apt",),
    "apt-cache": ("apt",),
    "dpkg": ("dpkg",),
    "dpkg-deb": ("dpkg",),
    "gcc": ("gcc", "libc6-dev"),
    "aarch64-linux-gnu-gcc": ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
    "xorriso": ("xorriso",),
}


def require_tool(tool: str, packages: Sequence[str] = ()) -> str:
    """The full path of *tool*, or InfraError with the ``apt-get install`` that gives it."""
    path = shutil.which(tool)
    if path is None:
        pkgs = " ".join(packages or TOOL_PACKAGES.get(tool, (tool,)))
        raise InfraError(f"{tool} not found on this host; install it with: "
                         f"apt-get install {pkgs}")
    return path


def run_tool(argv: Sequence[str], cwd: Path | None = None,
             packages: Sequence[str] = (), env: Mapping[str, str] | None = None) -> str:
    """Run a host tool to completion and return its stdout; failures raise InfraError.

    *env* adds variables to the inherited environment.
    """
    exe = require_tool(argv[0], packages)
    try:
        proc = subprocess.run([exe, *argv[1:]], cwd=cwd, capture_output=True,
                              text=True, timeout=900, check=False,
                              env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{' '.join(argv)}: timed out") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise InfraError(f"{' '.join(argv)} failed with status {proc.returncode}:\n{tail}")
    return proc.stdout
