"""The error families of slatcheck; each class carries its verdict and exit status.

* :class:`InfraError` -- the harness could not do its job (QEMU died, GDB lost,
  an image could not be built).  Verdict ``error``, exit status 3.
* :class:`ScenarioError` -- the scenario file is wrong.  Verdict
  ``scenario-error``, exit status 2.
* :class:`FindingsError` -- the thing under test is wrong: the nested tables
  disagree with the reference model, a step's condition failed in the guest, or
  the guest panicked.  Verdict ``fail`` (``panic``), exit status 1.

Two more outcomes are not errors of the harness nor of the kernel:
:class:`HarnessTimeout` (verdict ``timeout``, exit 1) and :class:`SkipScenario`
(verdict ``skip``, exit 0: the combination cannot run here, and says why).

:func:`verdict_of` reads the verdict of any exception; only the runner's
outermost layer catches broadly.

>>> verdict_of(InfraError("gdb lost")), verdict_of(KeyboardInterrupt())
('error', 'interrupted')
"""

from __future__ import annotations

__all__ = [
    "SlatcheckError",
    "InfraError",
    "ScenarioError",
    "ScenarioErrors",
    "FindingsError",
    "StepFailed",
    "HarnessTimeout",
    "SkipScenario",
    "MemoryReadError",
    "RegistryLookupError",
    "VERDICT_EXIT",
    "verdict_of",
    "exit_status_of",
]

# verdict -> exit status of `slatcheck run` (the largest over the scenarios run)
VERDICT_EXIT: dict[str, int] = {
    "pass": 0, "skip": 0, "fail": 1, "panic": 1, "timeout": 1, "interrupted": 1,
    "scenario-error": 2, "error": 3,
}


class SlatcheckError(Exception):
    """Base of every error raised on purpose by slatcheck."""

    verdict = "error"
    exit_status = 3


class InfraError(SlatcheckError):
    """The harness or its tools failed; says nothing about the kernel under test."""

    verdict = "error"
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

    verdict = "scenario-error"
    exit_status = 2

    def __init__(self, message: str, *, file: str | None = None,
                 line: int | None = None, field: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        where = ""
        if file is not None:
            where = file if line is None else f"{file}:{line}"
        if field:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class ScenarioErrors(ScenarioError):
    """Every error found in one scenario file, in file order."""

    def __init__(self, errors: list[ScenarioError]) -> None:
        if not errors:
            raise ValueError("ScenarioErrors needs at least one error")
        self.errors = sorted(errors, key=lambda e: (e.line or 0, e.field or ""))
        first = self.errors[0]
        ScenarioError.__init__(self, first.message, file=first.file, line=first.line,
                               field=first.field)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return str(self.args[0])


class FindingsError(SlatcheckError):
    """The kernel under test is wrong (findings, a failed guest condition, a panic)."""

    verdict = "fail"
    exit_status = 1


class StepFailed(FindingsError):
    """A scenario step's own condition failed in the guest (status, expected output)."""


class HarnessTimeout(SlatcheckError):
    """A step, a console wait or the whole scenario ran past its time limit."""

    verdict = "timeout"
    exit_status = 1


class SkipScenario(SlatcheckError):
    """The scenario cannot run here (no image in the cache, a CPU feature missing)."""

    verdict = "skip"
    exit_status = 0


class RegistryLookupError(InfraError, KeyError):
    """A name is not in a registry; the message lists the valid names.

    Inside the harness a miss is a bug (``error``); scenario validation catches it
    and reports it with the file, line and field instead.
    """

    def __init__(self, what: str, name: str, valid: list[str]) -> None:
        self.what = what
        self.name = name
        self.valid = sorted(valid)
        hint = _did_you_mean(name, self.valid)
        InfraError.__init__(
            self, f"unknown {what} {name!r}{hint}; valid: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _did_you_mean(name: str, valid: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match, else ``""``."""
    import difflib
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def verdict_of(exc: BaseException) -> str:
    """The verdict an exception ends a run with.

    >>> verdict_of(HarnessTimeout("boot")), verdict_of(ValueError("bug"))
    ('timeout', 'error')
    """
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, SlatcheckError):
        return exc.verdict
    return "error"


def exit_status_of(verdict: str) -> int:
    """The exit status a verdict contributes (unknown verdicts: 3)."""
    return VERDICT_EXIT.get(verdict, 3)
