"""One artifact directory per scenario run, and crash-safe JSON writes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from harness.errors import InfraError

__all__ = ["make_run_dir", "write_json", "write_text", "DEFAULT_ROOT"]

DEFAULT_ROOT = Path("artifacts")


def make_run_dir(root: Path, name: str) -> Path:
    """Create ``root/name`` (or ``name-2``, ``name-3`` ...) atomically; safe under xdist.

    A directory that cannot be made is an :class:`~harness.errors.InfraError`.
    """
    try:
        return _make_run_dir(root, name)
    except OSError as e:
        raise InfraError(f"cannot create the artifact directory under {root}: "
                         f"{e.strerror or e}") from None


def _make_run_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "scenario"
    for n in range(1, 10_000):
        path = root / (safe if n == 1 else f"{safe}-{n}")
        try:
            path.mkdir()
            return path.resolve()
        except FileExistsError:
            continue
    raise InfraError(f"no free artifact directory for {name} under {root}")


def write_json(path: Path, data: Any) -> None:
    """Write *data* as indented JSON through a temporary file and an atomic rename.

    On a failure (a full disk) the temporary file is removed and the OSError raised.
    """
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write *text* through a temporary file and an atomic rename (see :func:`write_json`)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
