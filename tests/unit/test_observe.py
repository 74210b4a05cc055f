"""settle_in_kernel: re-halt until the CPU is in kernel mode, or say why not."""

from __future__ import annotations

import pytest

from harness.errors import InfraError
from harness.observe import settle_in_kernel


class FakeGdb:
    """Halts land in user mode for the first *user_halts* stops."""

    def __init__(self, user_halts: int) -> None:
        self.user_halts = user_halts
        self.log: list[str] = []

    def in_kernel(self) -> bool:
        return self.log.count("interrupt") >= self.user_halts

    def cont(self) -> None:
        self.log.append("cont")

    def interrupt(self) -> None:
        self.log.append("interrupt")


def test_already_in_kernel_does_nothing() -> None:
    g = FakeGdb(0)
    settle_in_kernel(g, g.in_kernel)
    assert g.log == []


def test_user_mode_halts_are_retried() -> None:
    g = FakeGdb(3)
    settle_in_kernel(g, g.in_kernel)
    assert g.log == ["cont", "interrupt"] * 3 and g.in_kernel()


def test_gives_up_with_a_reason() -> None:
    g = FakeGdb(10**6)
    with pytest.raises(InfraError, match="user mode"):
        settle_in_kernel(g, g.in_kernel, tries=5)
    assert g.log.count("interrupt") == 5
