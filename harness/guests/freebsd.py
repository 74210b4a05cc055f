"""FreeBSD as the L1: getty login, ddb (or the panic as printed), ELF symbols and CTF
of the booted kernel and vmm.ko, backing frames from the VMM process's page tables.

* Console (:mod:`harness.freebsd_console`): root's ``sh`` prompt (FreeBSD 14's root
  shell); a panic (``panic:``, a ``Fatal trap``, ``KDB: enter:``, the ``db>`` prompt)
  ends the run with verdict ``panic`` after :func:`freebsd_debugger` ran ``show panic``,
  ``bt`` and ``ps`` in ddb(4), or, on a kernel without DDB (a RELEASE GENERIC has KDB
  and KDB_TRACE only [inferred]), kept what the kernel printed up to its reboot notice
  (``kern_reboot``: ``Automatic reboot in N seconds``); saved as ``debugger.txt``. The
  strings are the kernel's: ``kern/kern_shutdown.c`` ``vpanic()`` (``panic:``, ``cpuid
  =``, ``time =``), ``subr_kdb.c`` (``KDB: stack backtrace:``, ``KDB: enter:``),
  ``ddb/db_command.c`` (the ``db> `` prompt), ``amd64/amd64/trap.c`` (``Fatal trap N:
  ...``).
* Login: the BASIC-CI image's getty on ``ttyu0`` prints a banner and a bare
  ``login:``; ``root`` has no password.
* Symbols: the ELF ``.symtab`` of the image's ``/boot/kernel/kernel`` (no kernel
  KASLR on amd64), after checking by SHA-256 that the guest boots that file.
  Types: CTF (version 3 since FreeBSD 14) of vmm.ko over the kernel's.
* Backing: ``allproc`` -> the VMM process -> ``p_vmspace->vm_pmap.pm_cr3``, walked at
  each slot's address in that process (:mod:`harness.discovery.freebsd_proc`).

>>> FREEBSD.observable, FREEBSD.backing_symbols
(True, ('allproc',))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.console import Console
from harness.ctf import Ctf, ctf_section
from harness.discovery.freebsd_bhyve import FreeBsdKernelMem
from harness.discovery.freebsd_proc import PROC_SYMBOLS, proc_frames
from harness.elf_symbols import elf_symbols
from harness.errors import InfraError
from harness.freebsd_console import (
    CONSOLE,
    DDB_COMMANDS,
    DDB_PROMPT,
    DDB_WAIT,
    LOGIN,
    REBOOT_NOTICE,
    freebsd_debugger,
    panic_text,
)
from harness.guests.record import BackingQuery, GuestOS
from harness.images import Image
from harness.images.freebsd import GUEST_KERNEL
from harness.models.base import DictBacking
from harness.serial_login import serial_login

__all__ = ["FREEBSD", "CONSOLE", "LOGIN", "DDB_PROMPT", "DDB_COMMANDS", "REBOOT_NOTICE",
           "freebsd_debugger", "freebsd_login", "freebsd_symbols", "freebsd_types",
           "freebsd_backing", "panic_text", "DDB_WAIT"]


def freebsd_login(console: Console, image: Image, timeout: float) -> None:
    """Log in as the image's user on the serial getty (a bare ``login:``)."""
    login = image.manifest.get("login", {})
    serial_login(console, str(login.get("user", "root")), str(login.get("password", "")),
                 timeout, prompt=LOGIN)


def freebsd_symbols(console: Console, image: Image, names: Sequence[str],
                    artifacts: Path) -> Mapping[str, int]:
    """*names* from the kernel's ``.symtab``, after checking the guest boots that kernel."""
    want = image.manifest.get("files", {}).get("kernel")
    got = console.run(f"sha256 -q {GUEST_KERNEL}", timeout=120).output.strip()
    if want and got != want:
        raise InfraError(f"the guest's {GUEST_KERNEL} (sha256 {got}) is not the image's "
                         f"kernel ({want}): rebuild or re-import the image")
    syms = elf_symbols(Path(image.kernel).read_bytes(), names)
    (artifacts / "symbols.txt").write_text(
        "".join(f"{v:016x} {n}\n" for n, v in sorted(syms.items())))
    return syms


def freebsd_types(image: Image, modules: Sequence[str]) -> Ctf:
    """The CTF of the modules (vmm.ko, kept beside the image's kernel) over the kernel's."""
    kernel = ctf_section(Path(image.kernel).read_bytes())
    if not modules:
        return Ctf.load(kernel, flavour="freebsd")
    if len(modules) != 1:
        raise InfraError(f"FreeBSD types: one module's CTF over the kernel's, not {modules}")
    path = Path(image.dir) / f"{modules[0]}.ko"
    if not path.is_file():
        raise InfraError(f"the image has no {path.name} beside its kernel (import it with "
                         f"--module {path.name})")
    return Ctf.load(ctf_section(path.read_bytes()), flavour="freebsd", parent=kernel)


def freebsd_backing(query: BackingQuery) -> DictBacking:
    """The frames the VMM process maps at each slot's address, from its own pmap; none
    for a VM no process maps (pid 0: ``driver: bhyvectl``, never run)."""
    if query.pid == 0:
        return DictBacking({})
    view = query.l1
    if view is None:
        raise InfraError("FreeBSD backing walks the VMM process's page tables and needs the "
                         "halted L1 (BackingQuery.l1)")
    kmem = FreeBsdKernelMem(view.mem.phys, view.mem.kernel)
    return DictBacking(proc_frames(kmem, view.mem.phys, view.symbols, view.types, query.pid,
                                   query.slots, view.mem.size))


FREEBSD = GuestOS(
    name="freebsd", boot="disk", image_builder="freebsd-basic-ci", console=CONSOLE,
    symbols=freebsd_symbols, types=freebsd_types, backing=freebsd_backing,
    login=freebsd_login, backing_symbols=PROC_SYMBOLS)
