"""Warm starts: boot an L1 once, save it, and restore it for every later scenario.

A booted L1 (kernel up, modules loaded, shell at its prompt) is the same for
every scenario of an image and machine, so only the first run pays the cold
boot: it saves the machine (:meth:`~harness.machines.base.Machine.save_state`)
into the state cache, and later runs start from it
(:attr:`~harness.machines.base.MachineConfig.incoming`).  A restore that does not
come up with an answering shell of the image's kernel is discarded and the run
boots cold instead (and saves a fresh state).

The cache: ``$XDG_CACHE_HOME/slatcheck/states/<image>-<hash>-<emulator>-<key>/``
(default ``~/.cache``) holding ``state`` (what the backend saved: a file or a
directory) and ``meta.json`` (written last: a state without it is unfinished).
*key* covers the image's hash, the emulator and the machine configuration (CPU,
memory, CPUs, accelerator, boot spec).  Concurrent runs serialise the cold
boot on ``<dir>.lock``: the second waits for the first's state.

Warm starts are on for the emulators in :data:`WARM_EMULATORS` (``bochs``,
whose cold boot takes minutes); ``SLATCHECK_COLD=1`` turns them off.

>>> WarmState(Path("/c/linux-amd64-vmx-2456d281cb6f-bochs-0123abcd")).state
PosixPath('/c/linux-amd64-vmx-2456d281cb6f-bochs-0123abcd/state')
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.check import kernel_facts
from harness.context import KernelFacts, RunContext
from harness.errors import InfraError
from harness.images import Image
from harness.images.build import cache_root
from harness.kallsyms import Symbol, Symbols
from harness.machines.base import MachineConfig

__all__ = ["WARM_EMULATORS", "FORMAT", "WarmState", "warm_state", "state_key", "sparsify",
           "warm_boot", "Starter", "RESTORE_SHELL"]

WARM_EMULATORS = frozenset({"bochs"})
FORMAT = 1                       # bump when what a state holds changes
ZERO_CHUNK = 1 << 20
RESTORE_SHELL = 120.0            # seconds for a restored L1's shell to answer

Starter = Callable[[RunContext, MachineConfig, float, ExitStack], None]
"""The boot step's start of a machine and its console (a cold one waits for the shell)."""


@dataclass(frozen=True)
class WarmState:
    """One cached state of one (image, emulator, machine configuration)."""

    dir: Path

    @property
    def state(self) -> Path:
        """What the machine saved (a file or a directory)."""
        return self.dir / "state"

    @property
    def meta(self) -> Path:
        return self.dir / "meta.json"

    def saved(self) -> bool:
        """A finished state is there."""
        return self.meta.is_file()

    def load_meta(self) -> dict[str, Any]:
        """What was recorded with the state (see :meth:`finish`)."""
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError) as exc:
            raise InfraError(f"unreadable warm-start record {self.meta}: {exc}") from exc
        return meta if isinstance(meta, dict) else {}

    def discard(self) -> None:
        """Remove a state that did not restore."""
        shutil.rmtree(self.dir, ignore_errors=True)

    @contextmanager
    def cold_boot_lock(self, timeout: float) -> Iterator[None]:
        """Hold ``<dir>.lock`` while one run boots cold and saves; others wait *timeout*."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dir.with_name(self.dir.name + ".lock"), "a") as f:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise InfraError(f"another run held {f.name} for {timeout:g} s "
                                         "(a cold boot that never saved?)") from None
                    time.sleep(0.5)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def begin(self) -> Path:
        """A fresh empty ``state`` to save into (an unfinished old one is removed)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        return self.state

    def finish(self, meta: dict[str, Any]) -> None:
        """Make the saved state usable: compact it, then write ``meta.json`` last."""
        for path in ([self.state] if self.state.is_file() else self.state.rglob("*")):
            if path.is_file() and path.stat().st_size >= ZERO_CHUNK:
                sparsify(path)
        tmp = self.meta.with_name(".meta.json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.meta)


def state_key(image: Image, config: MachineConfig, emulator: str) -> str:
    """12 hex digits over what makes a saved L1 reusable."""
    facts = {"format": FORMAT, "emulator": emulator, "image": image.name,
             "image_hash": image.manifest.get("hash", ""), "cpu": config.cpu,
             "memory": config.memory, "smp": config.smp, "accel": config.accel,
             "boot": repr(config.boot), "arch": config.arch.name}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def warm_state(image: Image, config: MachineConfig, emulator: str,
               cache_dir: Path | None = None) -> WarmState | None:
    """The cache entry for this boot, or None when warm starts are off for it."""
    if emulator not in WARM_EMULATORS or os.environ.get("SLATCHECK_COLD"):
        return None
    root = cache_root(cache_dir).parent / "states"
    name = f"{image.name}-{image.manifest.get('hash', 'nohash')}-{emulator}-" \
           f"{state_key(image, config, emulator)}"
    return WarmState(root / name)


def sparsify(path: Path) -> None:
    """Turn runs of zero MiB in *path* into holes (a saved RAM image is mostly zeros).

    The content is unchanged; the file then takes the space of its data and
    reads fast.
    """
    tmp = path.with_name(f".{path.name}.sparse")
    zero = bytes(ZERO_CHUNK)
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        size = 0
        while chunk := src.read(ZERO_CHUNK):
            if chunk == zero[:len(chunk)]:
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)
            size += len(chunk)
        dst.truncate(size)
    os.replace(tmp, path)


# -- the boot step's side -----------------------------------------------------------------

def warm_boot(ctx: RunContext, config: MachineConfig, warm: WarmState, boot_timeout: float,
              start: Starter) -> None:
    """Restore *warm*'s state, or boot cold with *start* (one run at a time) and save it."""
    if warm.saved() and _restore(ctx, config, warm, start):
        return
    with warm.cold_boot_lock(boot_timeout):       # one cold boot; the others restore it
        if warm.saved() and _restore(ctx, config, warm, start):
            return
        start(ctx, config, boot_timeout, ctx.stack)
        kernel_facts(ctx)       # per boot: kept with the state, valid after a restore
        _save(ctx, warm)


def _restore(ctx: RunContext, config: MachineConfig, warm: WarmState,
             start: Starter) -> bool:
    """Start from the saved state; False (state discarded) if it does not come up as the
    image's booted L1 with an answering shell."""
    t = time.monotonic()
    with ExitStack() as attempt:
        try:
            start(ctx, replace(config, incoming=warm.state), RESTORE_SHELL, attempt)
            console = ctx.console()
            console.wait_for_shell(timeout=RESTORE_SHELL)
            release = console.run("uname -r", timeout=RESTORE_SHELL).output.strip()
            if release != ctx.require_image().kernel_release:
                raise InfraError(f"the saved L1 runs {release!r}, the image "
                                 f"{ctx.require_image().kernel_release!r}")
        except InfraError as exc:
            ctx.progress(f"warm start from {warm.dir} failed, booting cold: {exc}")
            ctx.detach_machine()
            warm.discard()
            return False
        ctx.stack.enter_context(attempt.pop_all())
    _restore_kernel_facts(ctx, warm)
    ctx.add_phase("restore", time.monotonic() - t)
    return True


def _restore_kernel_facts(ctx: RunContext, warm: WarmState) -> None:
    """The symbols and facts read in the saved boot: a restore is the same boot (same
    KASLR offsets, same module addresses), so they need not be read again."""
    saved = warm.load_meta().get("kernel", {}).get(ctx.hypervisor.name)
    guest, hv = ctx.guest, ctx.hypervisor
    if saved is None or guest.types is None or not set(hv.symbols) <= set(saved["symbols"]):
        return
    symbols = Symbols(Symbol(int(a, 16), t, n, m) for n, (a, t, m) in saved["symbols"].items())
    (ctx.run_dir / "kallsyms.txt").write_text("".join(
        f"{int(a, 16):016x} {t} {n}" + (f"\t[{m}]" if m else "") + "\n"
        for n, (a, t, m) in saved["symbols"].items()))
    ctx.kernel = KernelFacts(symbols=symbols, types=guest.types(ctx.require_image(),
                                                                 hv.type_modules),
                             facts=dict(saved["facts"]))


def _kernel_json(ctx: RunContext) -> dict[str, Any]:
    """The boot's symbols (address, type, module) and facts, for the state's meta."""
    k = kernel_facts(ctx)
    symbols = k.symbols
    records = {n: symbols.symbol(n) if isinstance(symbols, Symbols) else Symbol(symbols[n], "?", n)
               for n in symbols}
    return {"symbols": {n: [f"{r.addr:#x}", r.type, r.module] for n, r in records.items()},
            "facts": dict(k.facts)}


def _save(ctx: RunContext, warm: WarmState) -> None:
    """Save the freshly booted L1 for the next runs (a failure only costs their speed)."""
    t = time.monotonic()
    try:
        ctx.require_machine().save_state(warm.begin())
        warm.finish({"image": ctx.require_image().name,
                     "image_hash": ctx.require_image().manifest.get("hash", ""),
                     "machine": ctx.require_machine().describe(), "saved": time.time(),
                     "kernel": {ctx.hypervisor.name: _kernel_json(ctx)}})
    except InfraError as exc:
        ctx.progress(f"saving the booted L1 for warm starts failed: {exc}")
        warm.discard()
        return
    ctx.add_phase("save", time.monotonic() - t)
