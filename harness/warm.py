"""Warm starts: a booted L1 saved once per (image, machine), restored by later runs.

After a cold ``boot`` step (the image's own set-up done: modules loaded, shell
ready) the machine's state is saved into the cache; a later run with the same
key starts the emulator from it instead of booting (QEMU: ``-incoming``),
which takes a fraction of a second instead of seconds.

The key covers everything that could change the saved state: the image's
content (its manifest's SHA-256 of every file), the machine's own
:meth:`~harness.machines.base.Machine.state_key` (emulator, its version, its
options, the architecture) and the guest's boot arguments.  A different key is
another directory, so a stale state is never used; a state that fails to load
is removed and the run boots cold, with a note in its progress and result.

Concurrent runs (pytest-xdist) take an exclusive lock to save; the state is
written to a private name and renamed into place, and a run that finds the lock
taken does not wait (its boot was cold, the other one saves).  Reading needs no
lock: a state is only ever replaced by rename, never rewritten.

Per-boot facts survive a restore (it is the same boot, same KASLR): the guest's
boot id is recorded with the state and checked after a restore, and the kernel
symbols and facts read once for that boot are kept beside the state.

States are pruned after each save (:func:`prune`): a state not used for
``SLATCHECK_WARM_DAYS`` days (default 14) goes, and beyond ``SLATCHECK_WARM_BUDGET``
bytes in all (default 8 GiB; suffixes K, M, G) the least recently used go first.  A
state counts as used when a run starts from it (:meth:`WarmState.touch`).

Layout of ``$XDG_CACHE_HOME/slatcheck/states/<image>-<key>/``::

    state.bin       the saved machine (a file; a directory for Bochs)
    meta.json       key inputs, boot id, size, creation time
    symbols-<h>.json, facts-<name>.json   per-boot facts of this boot
    .lock           held while saving or removing

>>> key_of({"a": "1"}, {"b": "2"}) == key_of({"b": "2"}, {"a": "1"})
True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.images import Image

__all__ = ["WarmState", "states_root", "key_of", "image_key", "prune", "budget_from_env"]

STATE = "state.bin"
META = "meta.json"
FORMAT = 1           # bump when the layout or what a state holds changes


def states_root(cache_dir: Path | None = None) -> Path:
    """``<cache>/slatcheck/states``; *cache* defaults to $XDG_CACHE_HOME or ~/.cache."""
    if cache_dir is None:
        xdg = os.environ.get("XDG_CACHE_HOME")
        cache_dir = Path(xdg) if xdg else Path.home() / ".cache"
    return cache_dir / "slatcheck" / "states"


def key_of(*parts: Mapping[str, str]) -> str:
    """A short hash of key-value parts (order of keys and parts does not matter)."""
    merged: dict[str, str] = {}
    for p in parts:
        merged.update(p)
    blob = json.dumps(merged, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def image_key(image: Image) -> dict[str, str]:
    """The image's identity: the SHA-256 of every file it consists of."""
    files = image.manifest.get("files", {})
    return {"image": image.name,
            "image.files": hashlib.sha256(json.dumps(files, sort_keys=True).encode()
                                          ).hexdigest()}


@dataclass(frozen=True)
class WarmState:
    """One saved state's directory and what its key was made of."""

    dir: Path
    inputs: Mapping[str, str]

    @staticmethod
    def for_key(image: Image, machine_key: Mapping[str, str], append: str = "",
                cache_dir: Path | None = None) -> WarmState:
        """The state directory of *image* on a machine with *machine_key*."""
        inputs = {**image_key(image), **machine_key, "append": append, "format": str(FORMAT)}
        return WarmState(states_root(cache_dir) / f"{image.name}-{key_of(inputs)}", inputs)

    @property
    def state(self) -> Path:
        return self.dir / STATE

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The meta data of a complete state, or why the saved one cannot be used
        ((None, None): nothing saved)."""
        try:
            meta = json.loads((self.dir / META).read_text())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return None, f"its {META} is unreadable ({exc})"
        if not isinstance(meta, dict) or meta.get("inputs") != dict(self.inputs):
            return None, f"its {META} is not of this key"
        try:
            size = _size(self.state)
        except OSError as exc:
            return None, f"its {STATE} is unreadable ({exc})"
        if meta.get("size") != size or size == 0:
            return None, f"{STATE} holds {size} bytes, {meta.get('size')} were saved"
        return meta, None

    def meta(self) -> dict[str, Any] | None:
        """The recorded meta data of a complete state, or None."""
        return self._read()[0]

    def damage(self) -> str | None:
        """Why a state whose meta data is there cannot be used (None: fine, or none saved)."""
        return self._read()[1]

    def ready(self) -> bool:
        """Whether a complete state is there to start from."""
        return self.meta() is not None

    @contextlib.contextmanager
    def _locked(self, wait: bool) -> Iterator[bool]:
        """The exclusive lock of the directory; False if taken and *wait* is False."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)       # closing releases the lock

    def save(self, write: Any, boot_id: str) -> bool:
        """Save with *write(path)* unless another run is saving or has saved; True if
        this call saved.  Written under a private name, then renamed into place."""
        with self._locked(wait=False) as mine:
            if not mine or self.ready():
                return False
            tmp = self.dir / f".{STATE}.{os.getpid()}"
            try:
                write(tmp)
                size = _size(tmp)
                for old in self.dir.glob("*.json"):      # facts of an older boot
                    old.unlink(missing_ok=True)
                _remove(self.state)
                os.replace(tmp, self.state)
                meta = {"inputs": dict(self.inputs), "boot_id": boot_id, "size": size,
                        "created": time.time()}
                _write_atomic(self.dir / META, json.dumps(meta, indent=1))
            finally:
                _remove(tmp)
        return True

    def touch(self) -> None:
        """Record a use (a run started from the state): pruning keeps recent ones."""
        with contextlib.suppress(OSError):
            os.utime(self.dir / META)

    def last_used(self) -> float:
        """When the state was saved or last started from (0 when incomplete)."""
        try:
            return (self.dir / META).stat().st_mtime
        except OSError:
            return 0.0

    def discard(self, if_damaged: bool = False) -> None:
        """Remove a broken or stale state (readers keep their open copy); with
        *if_damaged*, only if it still is once the lock is held (a save may have just
        finished)."""
        with self._locked(wait=True):
            if if_damaged and self.damage() is None:
                return
            (self.dir / META).unlink(missing_ok=True)
            _remove(self.state)
            for old in self.dir.glob("*.json"):
                old.unlink(missing_ok=True)

    def boot_id(self) -> str | None:
        """The boot id recorded when the state was saved."""
        meta = self.meta()
        return None if meta is None else str(meta.get("boot_id"))

    # -- per-boot facts kept with the state ---------------------------------------------

    def recall(self, what: str, boot_id: str) -> Any:
        """A fact of boot *boot_id* kept under *what*, or None."""
        try:
            kept = json.loads((self.dir / f"{what}.json").read_text())
        except (OSError, ValueError):
            return None
        return kept.get("value") if kept.get("boot_id") == boot_id else None

    def remember(self, what: str, boot_id: str, value: Any) -> None:
        """Keep a per-boot fact of the saved boot (only that boot's)."""
        if self.boot_id() != boot_id:
            return
        with contextlib.suppress(OSError):
            _write_atomic(self.dir / f"{what}.json",
                          json.dumps({"boot_id": boot_id, "value": value}))


DAY = 86400.0
DEFAULT_BUDGET = 8 << 30
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def budget_from_env(environ: Mapping[str, str] = os.environ) -> tuple[int, float]:
    """(bytes, seconds) from SLATCHECK_WARM_BUDGET and SLATCHECK_WARM_DAYS.

    >>> budget_from_env({"SLATCHECK_WARM_BUDGET": "512M", "SLATCHECK_WARM_DAYS": "1"})
    (536870912, 86400.0)
    """
    text = environ.get("SLATCHECK_WARM_BUDGET", "").strip().upper()
    budget = DEFAULT_BUDGET
    if text and text[:-1 if text[-1] in "KMG" else None].isdigit():
        unit = text[-1] if text[-1] in "KMG" else ""
        budget = int(text.removesuffix(unit)) * _SUFFIX[unit]
    days = environ.get("SLATCHECK_WARM_DAYS", "")
    return budget, float(days) * DAY if days.replace(".", "", 1).isdigit() else 14 * DAY


def prune(root: Path, budget: int, max_age: float, keep: Path | None = None,
          now: float | None = None) -> list[Path]:
    """Remove states unused for *max_age* seconds, then the least recently used until
    the rest fit in *budget* bytes; *keep* (the state just saved) always stays.  A state
    another run is saving or removing (its lock taken) is left alone.  Returns the
    directories removed."""
    now = time.time() if now is None else now
    states = sorted((WarmState(d, {}) for d in root.glob("*-*") if d.is_dir()),
                    key=lambda w: w.last_used(), reverse=True)
    removed, total = [], 0
    for w in states:
        try:
            size = _size(w.state)
        except OSError:
            size = 0               # being saved, or a save that died (then it is old)
        if w.dir == keep or (now - w.last_used() <= max_age and total + size <= budget):
            total += size
            continue
        with w._locked(wait=False) as mine:
            if mine:
                _remove(w.dir)
                removed.append(w.dir)
    return removed


def _size(state: Path) -> int:
    """A state's size: a file's, or the sum of a directory's files (Bochs saves one)."""
    if state.is_dir():
        return sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
    return state.stat().st_size


def _remove(path: Path) -> None:
    """Remove a file or a directory, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
