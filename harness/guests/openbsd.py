"""OpenBSD as the L1: getty login, ddb on panics, ELF symbols and CTF of the booted kernel,
backing frames from the VMM process's own page tables.

* Console: root's ksh prompt; a panic (``panic:``, ``uvm_fault(``, a kernel trap, a ddb
  prompt) ends the run with verdict ``panic`` after :func:`openbsd_ddb` ran ``show
  panic``, ``trace``, ``ps``, ``show registers`` and every other CPU's trace in ddb
  (``debugger.txt`` beside ``console.log``).
* Login: ``root`` with the image's password on the serial getty
  (:func:`harness.serial_login.serial_login`).
* Symbols: the ELF ``.symtab`` of the image's kernel (the ``/bsd`` every boot runs: KARL
  is off in the image); the run first checks that the guest's ``/bsd.booted`` is that
  file, by SHA-256.  Types: the same file's ``.SUNW_ctf``.
* Backing: ``allprocess`` -> the VMM process -> its pmap's ``pm_pdirpa``, walked at each
  range's ``vmr_va`` (:mod:`harness.discovery.openbsd_proc`), with L1 halted.

>>> OPENBSD.observable, OPENBSD.backing_symbols
(True, ('allprocess',))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.console import Console
from harness.ctf import Ctf
from harness.discovery.openbsd_proc import PROC_SYMBOLS, process_frames
from harness.discovery.openbsd_vmm import DirectMapOrVirt
from harness.elf_symbols import elf_symbols
from harness.errors import InfraError
from harness.guests.record import BackingQuery, GuestOS
from harness.images import Image
from harness.models.base import DictBacking
from harness.openbsd_console import CONSOLE, cpu_count, openbsd_ddb
from harness.serial_login import serial_login

__all__ = ["OPENBSD", "CONSOLE", "openbsd_ddb", "openbsd_symbols", "openbsd_types",
           "openbsd_backing", "openbsd_login", "cpu_count", "KERNEL_IN_GUEST"]

KERNEL_IN_GUEST = "/bsd.booted"        # etc/rc links the booted kernel here
def openbsd_login(console: Console, image: Image, timeout: float) -> None:
    """Log in as the image's user on the serial getty."""
    login = image.manifest.get("login", {})
    serial_login(console, str(login.get("user", "root")), str(login.get("password", "")),
                 timeout)


def openbsd_symbols(console: Console, image: Image, names: Sequence[str],
                    artifacts: Path) -> Mapping[str, int]:
    """*names* from the kernel's ``.symtab``, after checking the guest runs that kernel."""
    want = image.manifest.get("files", {}).get("kernel")
    got = console.run(f"sha256 -q {KERNEL_IN_GUEST}", timeout=120).output.strip()
    if want and got != want:
        raise InfraError(f"the guest's {KERNEL_IN_GUEST} (sha256 {got}) is not the image's "
                         f"kernel ({want}): KARL relinked it? rebuild or re-import the image")
    syms = elf_symbols(Path(image.kernel).read_bytes(), names)
    (artifacts / "symbols.txt").write_text(
        "".join(f"{v:016x} {n}\n" for n, v in sorted(syms.items())))
    return syms


def openbsd_types(image: Image, modules: Sequence[str]) -> Ctf:
    """The kernel's CTF (vmm(4) is built in: no module types)."""
    return Ctf.from_elf(Path(image.kernel).read_bytes())


def openbsd_backing(query: BackingQuery) -> DictBacking:
    """The frames the VMM process maps at each range's address, from its own pmap."""
    view = query.l1
    if view is None:
        raise InfraError("OpenBSD backing walks the VMM process's page tables and needs "
                         "the halted L1 (BackingQuery.l1)")
    kmem = DirectMapOrVirt(view.mem.phys, view.mem.kernel)
    return DictBacking(process_frames(kmem, view.mem.phys, view.symbols,
                                      view.types, query.pid, query.slots, view.mem.size))


OPENBSD = GuestOS(
    name="openbsd", boot="disk", image_builder="openbsd-autoinstall", console=CONSOLE,
    symbols=openbsd_symbols, types=openbsd_types, backing=openbsd_backing,
    login=openbsd_login, backing_symbols=PROC_SYMBOLS)
