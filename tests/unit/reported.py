"""Helpers for the tests of reports and compare: recorded runs, copied and edited."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["edit_json", "copy_run"]


def edit_json(path: Path, change: Callable[[Any], None]) -> None:
    """Apply *change* to the JSON document at *path* in place."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def copy_run(run_dir: Path, root: Path) -> Path:
    """A copy of *run_dir* under the artifacts root *root* (same directory name)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(run_dir, root / run_dir.name))
