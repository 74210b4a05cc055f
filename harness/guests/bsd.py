"""The BSD L1 guests, as far as they go today: console profiles only.

Their images, symbol and type readers (CTF, DWARF) and backing truth are not
built yet, so these records are not observable: a scenario naming them fails
validation (there is no image for them), never boots Linux instead.
"""

from __future__ import annotations

from harness.console import LINE_START, ConsoleProfile
from harness.guests.record import GuestOS

__all__ = ["OPENBSD", "FREEBSD", "DRAGONFLY"]

OPENBSD = GuestOS(
    name="openbsd", boot="disk", image_builder="",
    console=ConsoleProfile(
        name="openbsd", prompt=r"[#$] $",
        panic=(LINE_START + r"panic: ", r"ddb(?:\{\d+\})?> ", LINE_START + r"uvm_fault\(",
               LINE_START + r"kernel: page fault trap, code=")),
    missing="no OpenBSD image builder, CTF reader or vmm discovery yet")
FREEBSD = GuestOS(
    name="freebsd", boot="disk", image_builder="",
    console=ConsoleProfile(
        name="freebsd", prompt=r"[#$] $",
        panic=(LINE_START + r"panic: ", LINE_START + r"Fatal trap \d+: ",
               LINE_START + r"KDB: enter: ", r"\ndb> ")),
    missing="no FreeBSD image builder, CTF reader or bhyve discovery yet")
DRAGONFLY = GuestOS(
    name="dragonfly", boot="disk", image_builder="",
    console=ConsoleProfile(
        name="dragonfly", prompt=r"[#$] $",
        panic=(LINE_START + r"panic: ", LINE_START + r"Fatal trap \d+: ",
               LINE_START + r"Trace beginning at frame", r"\ndb> ")),
    missing="no DragonFly image builder, DWARF reader or vkernel discovery yet")
