"""The initramfs: busybox, the kernel modules, the workload and an ``/init`` script."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

from harness.images.cpio import CpioWriter
from harness.images.recipe import Recipe

__all__ = ["InitramfsContents", "init_script", "build_initramfs"]

# printed by /init once the console is its own: only then may the harness type
READY_LINE = "slatcheck-init: ready"

WORKLOAD_PATH = "bin/slat-workload"

_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
         "root", "lib", "lib/modules")


@dataclass(frozen=True)
class InitramfsContents:
    """What goes into the archive besides the fixed directories."""

    busybox: bytes
    workload: bytes
    kernel_release: str
    modules: dict[str, bytes]     # path relative to lib/modules/<release> -> contents
    modules_dep: str


def init_script(recipe: Recipe) -> str:
    """The ``/init`` shell script: mounts, module loads, then a root shell on the console.

    The shell runs under ``setsid cttyhack`` so the console is its controlling
    terminal (Ctrl-C reaches the foreground command); the console is 1024 columns
    wide so long command lines are echoed without wrapping.  When the shell exits
    the machine powers off instead of panicking.
    """
    loads = "".join(
        f"modprobe {m.name} {m.params}".rstrip()
        + f" || echo 'slatcheck-init: modprobe {m.name} failed'\n"
        for m in recipe.modules)
    return (
        "#!/bin/busybox sh\n"
        "/bin/busybox --install -s\n"
        "mount -t proc proc /proc\n"
        "mount -t sysfs sysfs /sys\n"
        "mount -t devtmpfs devtmpfs /dev\n"
        f"{loads}"
        "export HOME=/root PATH=/bin:/sbin:/usr/bin:/usr/sbin\n"
        f"export PS1='{recipe.prompt}'\n"
        "stty cols 1024 rows 40 2>/dev/null\n"
        "cd /root\n"
        f"echo '{READY_LINE}'\n"
        "setsid cttyhack sh\n"
        "poweroff -f\n")


def build_initramfs(recipe: Recipe, contents: InitramfsContents, out: Path) -> None:
    """Write the gzip'd newc archive to *out* (reproducible: fixed mtimes)."""
    archive = CpioWriter()
    for d in _DIRS:
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    archive.file("init", init_script(recipe).encode(), 0o755)
    archive.file("bin/busybox", contents.busybox, 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file(WORKLOAD_PATH, contents.workload, 0o755)
    base = f"lib/modules/{contents.kernel_release}"
    archive.directory(base)
    made = {base}
    for rel, data in sorted(contents.modules.items()):
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            sub = "/".join((base, *parts[:i]))
            if sub not in made:
                archive.directory(sub)
                made.add(sub)
        archive.file(f"{base}/{rel}", data)
    archive.file(f"{base}/modules.dep", contents.modules_dep.encode())
    out.write_bytes(gzip.compress(archive.finish(), compresslevel=6, mtime=0))
