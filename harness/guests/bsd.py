"""The BSD L1 guests, re-exported here: OpenBSD (:mod:`harness.guests.openbsd`), FreeBSD
(:mod:`harness.guests.freebsd`) and DragonFly (:mod:`harness.guests.dragonfly`), all
observable.
"""

from __future__ import annotations

from harness.guests.dragonfly import DRAGONFLY
from harness.guests.freebsd import FREEBSD
from harness.guests.openbsd import OPENBSD

__all__ = ["OPENBSD", "FREEBSD", "DRAGONFLY"]
