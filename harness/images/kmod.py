"""Kernel modules: their ELF bytes (``.ko``, ``.ko.xz``, ``.ko.zst``) and ``depmod``.

Neither Debian's kernel packages nor a ``modules_install`` directory copied without
its index are sure to hold a usable ``modules.dep``, and busybox ``modprobe`` needs
one.  The dependencies are what ``depmod -b ROOT RELEASE`` (kmod) computes from the
modules' symbols, read back from the ``modules.dep`` it writes.  Each line names a
module and the modules it needs, the one loaded first last:

>>> deps = parse_modules_dep("kernel/kvm-amd.ko.xz: kernel/kvm.ko.xz kernel/irqbypass.ko.xz\\n"
...                          "kernel/kvm.ko.xz: kernel/irqbypass.ko.xz\\n"
...                          "kernel/irqbypass.ko.xz:\\n")
>>> [str(p) for p in load_order(deps, ["kvm_amd"])]
['kernel/irqbypass.ko.xz', 'kernel/kvm.ko.xz', 'kernel/kvm-amd.ko.xz']
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from harness.errors import InfraError
from harness.images.host import run_tool

__all__ = [
    "SUFFIXES",
    "module_name",
    "plain_name",
    "module_elf",
    "depmod",
    "parse_modules_dep",
    "load_order",
    "modules_dep",
]

SUFFIXES = (".ko", ".ko.xz", ".ko.zst")
ZSTD_TIMEOUT_S = 120

ModulesDep = Mapping[Path, tuple[Path, ...]]


def _strip_suffix(base: str) -> str:
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def module_name(path: Path | str) -> str:
    """The kernel's name of a module file: basename without suffix, ``-`` as ``_``.

    >>> module_name("kernel/arch/x86/kvm/kvm-amd.ko.xz")
    'kvm_amd'
    """
    return _strip_suffix(Path(path).name).replace("-", "_")


def plain_name(path: Path) -> Path:
    """The path of the decompressed module: ``kvm-amd.ko.zst`` -> ``kvm-amd.ko``.

    >>> str(plain_name(Path("kernel/kvm.ko.xz")))
    'kernel/kvm.ko'
    """
    return path.with_name(_strip_suffix(path.name) + ".ko")


def _unzstd(data: bytes, where: Path) -> bytes:
    """Decompress a zstd module with the ``zstd`` tool (not in Python 3.11's stdlib)."""
    tool = shutil.which("zstd")
    if tool is None:
        raise InfraError(f"module {where} is zstd-compressed: install the zstd tool "
                         "(apt-get install zstd)")
    proc = subprocess.run([tool, "-dc"], input=data, capture_output=True,
                          timeout=ZSTD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise InfraError(f"cannot decompress module {where}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def module_elf(path: Path) -> bytes:
    """The ELF bytes of a module file, decompressed if it is ``.ko.xz`` or ``.ko.zst``."""
    data = path.read_bytes()
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(data)
    except lzma.LZMAError as exc:
        raise InfraError(f"cannot decompress module {path}: {exc}") from exc
    if path.name.endswith(".zst"):
        return _unzstd(data, path)
    return data


def depmod(root: Path, release: str) -> dict[Path, tuple[Path, ...]]:
    """Run ``depmod -b ROOT RELEASE`` over ``ROOT/lib/modules/RELEASE``; its modules.dep.

    depmod writes its index files into that directory, so *root* must be a copy the
    caller owns.
    """
    moddir = root / "lib" / "modules" / release
    if not moddir.is_dir():
        raise InfraError(f"depmod: no {moddir}")
    run_tool(["depmod", "-b", str(root), release], packages=("kmod",))
    return parse_modules_dep((moddir / "modules.dep").read_text())


def parse_modules_dep(text: str) -> dict[Path, tuple[Path, ...]]:
    """``modules.dep`` as module path -> the paths it needs (both relative to the release
    directory; the dependency to load first is the last)."""
    deps: dict[Path, tuple[Path, ...]] = {}
    for line in text.splitlines():
        module, sep, rest = line.partition(":")
        if sep:
            deps[Path(module.strip())] = tuple(Path(p) for p in rest.split())
    return deps


def load_order(deps: ModulesDep, wanted: Iterable[str]) -> list[Path]:
    """The module files that loading *wanted* (names) takes, each after what it needs."""
    by_name = {module_name(path): path for path in deps}
    order: list[Path] = []
    for name in wanted:
        if name not in by_name:
            raise InfraError(f"module {name!r} is not among the kernel's {len(by_name)} "
                             "modules (modules.dep)")
        path = by_name[name]
        for dep in (*reversed(deps[path]), path):
            if dep not in order:
                order.append(dep)
    return order


def modules_dep(deps: ModulesDep, order: Iterable[Path]) -> str:
    """The ``modules.dep`` of the decompressed modules in *order* (what the guest holds).

    >>> deps = {Path("a.ko.xz"): (Path("b.ko.xz"),), Path("b.ko.xz"): ()}
    >>> modules_dep(deps, [Path("b.ko.xz"), Path("a.ko.xz")])
    'b.ko:\\na.ko: b.ko\\n'
    """
    lines = []
    for path in order:
        needs = " ".join(str(plain_name(p)) for p in deps[path])
        lines.append(f"{plain_name(path)}: {needs}".rstrip() + "\n")
    return "".join(lines)
