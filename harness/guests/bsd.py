"""The BSD L1 guests.  OpenBSD is observable (:mod:`harness.guests.openbsd`, re-exported
here); FreeBSD and DragonFly are console profiles only.

Their images, symbol and type readers and backing truth are not built yet, so
those records are not observable: a scenario naming them fails validation
(there is no image for them), never boots Linux instead.
"""

from __future__ import annotations

from harness.console import LINE_START, ConsoleProfile
from harness.guests.openbsd import OPENBSD
from harness.guests.record import GuestOS

__all__ = ["OPENBSD", "FREEBSD", "DRAGONFLY"]

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
