"""The three error families of slatcheck.

* :class:`InfraError` -- the harness could not do its job (QEMU died, GDB lost,
  an image could not be built).  Exit status 3.
* :class:`ScenarioError` -- the scenario file is wrong.  Exit status 2.
* :class:`FindingsError` -- the thing under test is wrong: the nested tables
  disagree with the reference model, or the guest panicked.  Exit status 1.
"""

from __future__ import annotations

__all__ = [
    "SlatcheckError",
    "InfraError",
    "ScenarioError",
    "FindingsError",
    "StepFailed",
    "MemoryReadError",
    "RegistryLookupError",
]


class SlatcheckError(Exception):
    """Base of every error raised on purpose by slatcheck."""

    exit_status = 3


class InfraError(SlatcheckError):
    """The harness or its tools failed; says nothing about the kernel under test."""

    exit_status = 3


class MemoryReadError(InfraError):
    """A physical-memory read failed.  Never turned into an empty table."""

    def __init__(self, addr: int, size: int, reason: str = "") -> None:
        self.addr = addr
        self.size = size
        self.reason = reason
        msg = f"cannot read {size:#x} bytes at physical {addr:#x}"
        super().__init__(f"{msg}: {reason}" if reason else msg)


class ScenarioError(SlatcheckError):
    """The scenario file is invalid; carries the file, line and field."""

    exit_status = 2

    def __init__(self, message: str, *, file: str | None = None,
                 line: int | None = None, field: str | None = None) -> None:
        self.file = file
        self.line = line
        self.field = field
        where = ""
        if file is not None:
            where = file if line is None else f"{file}:{line}"
        if field:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class FindingsError(SlatcheckError):
    """The kernel under test is wrong (findings, panic)."""

    exit_status = 1


class StepFailed(FindingsError):
    """A scenario step's own condition failed in the guest (status, expected output)."""


class RegistryLookupError(KeyError, ScenarioError):
    """A name is not in a registry; the message lists the valid names."""

    def __init__(self, what: str, name: str, valid: list[str]) -> None:
        ScenarioError.__init__(
            self, f"unknown {what} {name!r}; valid: {', '.join(sorted(valid))}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]
