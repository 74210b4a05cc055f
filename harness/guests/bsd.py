"""The BSD L1 guests, re-exported here: OpenBSD (:mod:`harness.guests.openbsd`) and
FreeBSD (:mod:`harness.guests.freebsd`) are observable; DragonFly is a console profile only.

Its image, symbol and type readers and backing truth are not built yet, so that
record is not observable: a scenario naming it fails validation (there is no image
for it), never boots Linux instead.
"""

from __future__ import annotations

from harness.console import LINE_START, ConsoleProfile
from harness.guests.freebsd import FREEBSD
from harness.guests.openbsd import OPENBSD
from harness.guests.record import GuestOS

__all__ = ["OPENBSD", "FREEBSD", "DRAGONFLY"]

DRAGONFLY = GuestOS(
    name="dragonfly", boot="disk", image_builder="",
    console=ConsoleProfile(
        name="dragonfly", prompt=r"[#$] $",
        panic=(LINE_START + r"panic: ", LINE_START + r"Fatal trap \d+: ",
               LINE_START + r"Trace beginning at frame", r"\ndb> ")),
    missing="no DragonFly image builder, DWARF reader or vkernel discovery yet")
