"""Kernel modules: read ``.modinfo``, close over ``depends=``, write ``modules.dep``.

Debian's kernel packages ship no ``modules.dep``; busybox ``modprobe`` needs one.
The dependencies are read from each module's own ``.modinfo`` section (what
``modinfo -F depends`` prints), so no host ``kmod`` is needed:

>>> deps = {"kvm_amd": ["kvm", "ccp"], "kvm": ["irqbypass"], "ccp": [], "irqbypass": []}
>>> module_closure(["kvm_amd"], deps.__getitem__)
['irqbypass', 'kvm', 'ccp', 'kvm_amd']
"""

from __future__ import annotations

import io
import lzma
from collections.abc import Callable, Iterable
from pathlib import Path

from elftools.elf.elffile import ELFFile

from harness.errors import InfraError

__all__ = [
    "module_name",
    "index_modules",
    "read_modinfo",
    "module_depends",
    "module_closure",
    "modules_dep",
]

_SUFFIXES = (".ko", ".ko.xz")


def module_name(path: Path | str) -> str:
    """The kernel's name of a module file: basename without suffix, ``-`` as ``_``.

    >>> module_name("kernel/arch/x86/kvm/kvm-amd.ko")
    'kvm_amd'
    """
    base = Path(path).name
    for suffix in _SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def index_modules(moddir: Path) -> dict[str, Path]:
    """Map module name -> path relative to *moddir* (``lib/modules/<release>``)."""
    found: dict[str, Path] = {}
    for suffix in _SUFFIXES:
        for path in sorted(moddir.rglob(f"*{suffix}")):
            found.setdefault(module_name(path), path.relative_to(moddir))
    return found


def _module_bytes(path: Path) -> bytes:
    """The ELF bytes of a module file, decompressed if it is ``.ko.xz``."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def read_modinfo(path: Path) -> dict[str, list[str]]:
    """The ``key=value`` pairs of a module's ``.modinfo`` section (keys may repeat)."""
    try:
        elf = ELFFile(io.BytesIO(_module_bytes(path)))
        section = elf.get_section_by_name(".modinfo")
    except Exception as exc:  # pyelftools raises several unrelated types
        raise InfraError(f"cannot read module {path}: {exc}") from exc
    if section is None:
        raise InfraError(f"module {path} has no .modinfo section")
    info: dict[str, list[str]] = {}
    for item in section.data().split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def module_depends(path: Path) -> list[str]:
    """The module names listed in ``depends=`` (``modinfo -F depends``)."""
    values = read_modinfo(path).get("depends", [""])
    return [name for value in values for name in value.split(",") if name]


def module_closure(wanted: Iterable[str],
                   depends: Callable[[str], list[str]]) -> list[str]:
    """Every module needed by *wanted*, dependencies before their users."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise InfraError(f"module dependency cycle through {name}")
        visiting.add(name)
        for dep in depends(name):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def modules_dep(order: list[str], paths: dict[str, Path],
                depends: Callable[[str], list[str]]) -> str:
    """The text of ``modules.dep`` for the modules in *order*.

    Each line is ``path: dep-path ...`` listing the full closure of that module,
    as ``depmod`` writes it.
    """
    lines = []
    for name in order:
        closure = module_closure([name], depends)[:-1]
        deps = " ".join(str(paths[dep]) for dep in reversed(closure))
        lines.append(f"{paths[name]}: {deps}".rstrip() + "\n")
    return "".join(lines)
