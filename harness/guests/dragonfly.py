"""DragonFly BSD as the L1: getty login then ``sh``, ddb (or the panic as printed), ELF
symbols and DWARF types of the booted kernel, backing frames from the memory image.

* Console (:mod:`harness.dragonfly_console`): ``sh``'s prompt (root's login shell is
  csh: :func:`dragonfly_login` execs ``/bin/sh``, whose ``$?`` the console's command
  framing reads).  A panic (``panic:``, a ``Fatal trap``, the ``db>`` prompt) ends the
  run with verdict ``panic`` after :func:`dragonfly_debugger` ran ``trace``, ``ps`` and
  ``show registers`` in ddb, or, on a kernel that does not enter the debugger
  (``debug.debugger_on_panic=0``), kept what the kernel printed up to its reboot notice;
  saved as ``debugger.txt``.  [inferred] as BSD-GUESTS.md section 3.4 says:
  ``Debugger("panic")``, ``Stopped at``, ``db>``, and the FreeBSD-derived ``Automatic
  reboot in N seconds``.
* Login: the getty the image's first boot put on ``ttyd0``; ``root`` has no password.
* Symbols: the ELF ``.symtab`` of the image's kernel (kept by the image: the stock
  kernel copied out of the guest, or the user's kernel), after checking by SHA-256
  that the guest boots that file.  The process table is ``allprocs`` or
  ``procglob`` (:data:`harness.images.dragonfly.PROC_SYMBOLS`): either is enough.
* Types: DWARF (:mod:`harness.dwarf`), the subset kept as ``types.json`` beside the
  kernel, else the kernel file's own DWARF.
* Backing: the memory image's object pages, found again from the pid and the
  region's address (:func:`dragonfly_backing`), independently of the host pmap the
  model judges.

>>> DRAGONFLY.observable, DRAGONFLY.backing_symbols
(True, ('allprocs', 'procglob'))
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.console import Console
from harness.ctf import Ctf, CtfError
from harness.discovery.dragonfly_vkernel import find_proc, regions_of_proc
from harness.discovery.linux_kvm_common import KernelReader
from harness.dragonfly_console import (
    CONSOLE,
    DDB_COMMANDS,
    DDB_PROMPT,
    LOGIN,
    REBOOT_NOTICE,
    SHELL_SETUP,
    dragonfly_debugger,
)
from harness.dwarf import Dwarf, types_from_json
from harness.elf_symbols import SymbolError, elf_symbols
from harness.errors import InfraError
from harness.formats.vpte import ObjectImage
from harness.guests.record import BackingQuery, GuestOS
from harness.images import Image
from harness.images.dragonfly import GUEST_KERNEL, PROC_SYMBOLS
from harness.serial_login import serial_login

__all__ = ["DRAGONFLY", "CONSOLE", "LOGIN", "DDB_PROMPT", "DDB_COMMANDS", "REBOOT_NOTICE",
           "SHELL_SETUP", "dragonfly_debugger", "dragonfly_login", "dragonfly_symbols",
           "dragonfly_types", "dragonfly_backing", "TYPES_FILE"]

TYPES_FILE = "types.json"
# the guest's digest of its kernel (sha256(1) as in FreeBSD; openssl where it is not)
KERNEL_DIGEST = (f"sha256 -q {GUEST_KERNEL} 2>/dev/null || "
                 f"openssl dgst -sha256 {GUEST_KERNEL} | sed 's/.*= //'")


def dragonfly_login(console: Console, image: Image, timeout: float) -> None:
    """Log in as the image's user on the serial getty, then switch to ``sh``."""
    login = image.manifest.get("login", {})
    serial_login(console, str(login.get("user", "root")), str(login.get("password", "")),
                 timeout, prompt=LOGIN)
    console.send_line(SHELL_SETUP[0])
    console.wait_for_shell(timeout=60)
    console.run(SHELL_SETUP[1], timeout=30)


def dragonfly_symbols(console: Console, image: Image, names: Sequence[str],
                      artifacts: Path) -> Mapping[str, int]:
    """*names* from the kernel's ``.symtab`` (one of the process-table names is enough),
    after checking the guest boots that kernel."""
    want = image.manifest.get("files", {}).get("kernel")
    got = console.run(KERNEL_DIGEST, timeout=120, check=False).output.strip()
    if want and re.fullmatch(r"[0-9a-f]{64}", got) and got != want:
        raise InfraError(f"the guest's {GUEST_KERNEL} (sha256 {got}) is not the image's "
                         f"kernel ({want}): rebuild or re-import the image")
    elf = Path(image.kernel).read_bytes()
    plain = [n for n in names if n not in PROC_SYMBOLS]
    syms = dict(elf_symbols(elf, plain))
    for name in (n for n in names if n in PROC_SYMBOLS):
        try:
            syms.update(elf_symbols(elf, [name]))
        except SymbolError:
            pass
    if any(n in PROC_SYMBOLS for n in names) and not set(PROC_SYMBOLS) & set(syms):
        raise InfraError(f"the kernel defines none of {', '.join(PROC_SYMBOLS)}: no process "
                         "table to read")
    (artifacts / "symbols.txt").write_text(
        "".join(f"{v:016x} {n}\n" for n, v in sorted(syms.items())))
    return syms


def dragonfly_types(image: Image, modules: Sequence[str]) -> Ctf:
    """The kernel's DWARF types: the subset kept with the image, else the kernel's own."""
    if modules:
        raise InfraError(f"DragonFly types come from the kernel's DWARF alone, not {modules}")
    kept = Path(image.dir) / TYPES_FILE
    try:
        if kept.is_file():
            return types_from_json(kept.read_text())
        return Dwarf.load_elf(Path(image.kernel).read_bytes())
    except CtfError as exc:
        raise InfraError(f"image {image.name} has no usable kernel types ({exc}): build "
                         f"dragonfly-amd64-vkernel with the kernel.debug of a kernel with "
                         f"the vkernel support") from exc


def dragonfly_backing(query: BackingQuery) -> ObjectImage:
    """The memory image behind the region at the slot's address, as the object's pages."""
    view = query.l1
    if view is None:
        raise InfraError("DragonFly backing reads the memory image's object and needs the "
                         "halted L1 (BackingQuery.l1)")
    if len(query.slots) != 1:
        raise InfraError(f"a vkernel region is one slot, not {len(query.slots)}")
    _gpa, _size, hva = query.slots[0]
    k = KernelReader(view.mem.kernel, view.types)
    proc = find_proc(k, view.symbols, query.pid)
    for r in regions_of_proc(k, proc, view.target.translate, view.mem.size):
        if r.start == hva:
            return ObjectImage(view.mem.phys, r.pages, size=r.object_size)
    raise InfraError(f"process {query.pid} has no MAP_VPAGETABLE region at {hva:#x}")


DRAGONFLY = GuestOS(
    name="dragonfly", boot="disk", image_builder="dragonfly-live", console=CONSOLE,
    symbols=dragonfly_symbols, types=dragonfly_types, backing=dragonfly_backing,
    login=dragonfly_login, backing_symbols=PROC_SYMBOLS)
