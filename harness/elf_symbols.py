"""Kernel symbols from an ELF file's symbol table (OpenBSD's ``/bsd.booted`` keeps one).

OpenBSD has no kallsyms: the running kernel is ``/bsd.booted`` (KARL relinks
``/bsd`` at every boot), and its ``.symtab`` gives the addresses of globals
such as ``vmm_softc``.  A name that is missing or defined more than once with
different values raises :class:`SymbolError` naming it.

>>> elf_symbols(open("/bsd.booted", "rb").read(), ["vmm_softc"])   # doctest: +SKIP
{'vmm_softc': 18446744071591075456}
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from harness.errors import InfraError

__all__ = ["elf_symbols", "SymbolError"]


class SymbolError(InfraError):
    """A kernel symbol the harness needs is not in the ELF symbol table."""


def elf_symbols(elf: bytes, names: Iterable[str]) -> dict[str, int]:
    """``{name: st_value}`` for each of *names* defined in *elf*'s ``.symtab``."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    wanted = set(names)
    try:
        table = ELFFile(io.BytesIO(elf)).get_section_by_name(".symtab")
    except ELFError as exc:
        raise SymbolError(f"not an ELF file: {exc}") from exc
    if not isinstance(table, SymbolTableSection):
        raise SymbolError("the ELF file has no .symtab (a stripped kernel?)")
    found: dict[str, set[int]] = {}
    for sym in table.iter_symbols():
        if sym.name in wanted and sym["st_shndx"] != "SHN_UNDEF":
            found.setdefault(sym.name, set()).add(int(sym["st_value"]))
    missing = sorted(wanted - set(found))
    if missing:
        raise SymbolError(f"symbols not defined in the kernel's .symtab: {', '.join(missing)}")
    ambiguous = sorted(n for n, v in found.items() if len(v) > 1)
    if ambiguous:
        raise SymbolError(f"symbols defined more than once with different values: "
                          f"{', '.join(ambiguous)}")
    return {n: v.pop() for n, v in found.items()}
