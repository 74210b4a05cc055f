"""The L1 operating systems: one frozen record each, in the :data:`GUEST_OSES` registry.

A :class:`GuestOS` says everything the harness must know about an L1 OS that
is not a hypervisor: how its console looks (prompt, panic lines), how its
images are made and how it boots, where kernel symbols and types come from,
and where the independent truth about the frames backing a VM comes from.
Sources a guest does not have yet are None: such a guest validates its console
but cannot be observed (``observable`` is False and says why).

>>> GUEST_OSES["linux"].observable, GUEST_OSES["openbsd"].boot
(True, 'disk')
"""

from __future__ import annotations

from harness.guests.bsd import DRAGONFLY, FREEBSD, OPENBSD
from harness.guests.linux import LINUX
from harness.guests.record import GuestOS
from harness.registry import Registry

__all__ = ["GuestOS", "GUEST_OSES"]

GUEST_OSES: Registry[GuestOS] = Registry("guest OS")
for _guest in (LINUX, OPENBSD, FREEBSD, DRAGONFLY):
    GUEST_OSES.add(_guest.name, _guest)
