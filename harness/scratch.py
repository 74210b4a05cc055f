"""Private scratch directories (sockets, overlays, dumps) that never outlive their owner.

:func:`private_dir` makes a 0700 directory under the temporary directory whose name
starts with ``slc-`` and that records its owner's process id.  A run killed with
SIGKILL cannot remove its own; :func:`sweep_stale` (called when a run starts) removes
every such directory whose owner is gone.

>>> d = private_dir("doc"); d.stat().st_mode & 0o777, (d / OWNER).read_text() == str(os.getpid())
(448, True)
>>> shutil.rmtree(d)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["private_dir", "sweep_stale", "PREFIX", "OWNER"]

PREFIX = "slc-"
OWNER = ".owner"


def private_dir(label: str) -> Path:
    """A new 0700 directory ``slc-<label>-XXXX`` owned by this process."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{label[:16]}-"))
    os.chmod(path, 0o700)
    (path / OWNER).write_text(str(os.getpid()))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove the scratch directories of dead owners (ours only); returns what was removed."""
    base = Path(root or tempfile.gettempdir())
    removed = []
    for path in base.glob(f"{PREFIX}*"):
        try:
            if not path.is_dir() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
            pid = int((path / OWNER).read_text().strip())
        except (OSError, ValueError):
            continue                    # not one of ours, or being created right now
        if not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
