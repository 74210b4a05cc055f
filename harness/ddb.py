"""Collect a BSD kernel debugger's view of a panic over the console: ddb(4) and friends.

OpenBSD enters ddb on a panic (prompt ``ddb{N}>`` or ``ddb>``); FreeBSD and
DragonFly with DDB print ``db>``.  :func:`collect` types each command of a
list, waits for the next prompt, and keeps what came between: the text a
bug report needs (``show panic``, ``trace``, ``ps``, every CPU's trace).
The commands and the prompt are the OS's (:mod:`harness.openbsd_console`
for OpenBSD); the session is anything that can type a line and wait for a
pattern without treating the prompt as a new panic
(:meth:`harness.console.Console.expect_quiet`).

>>> format_transcript([("trace", "db_enter() at db_enter+0x10\\n")])
'ddb> trace\\ndb_enter() at db_enter+0x10\\n'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

__all__ = ["DebuggerSession", "collect", "format_transcript", "DDB_TIMEOUT"]

DDB_TIMEOUT = 30.0                 # seconds for one debugger command's output


class DebuggerSession(Protocol):
    """What :func:`collect` needs of a console."""

    def send_line(self, s: str) -> None: ...

    def expect_quiet(self, pattern: re.Pattern[str], timeout: float) -> str:
        """Wait for *pattern*; the text before it (no panic watch)."""
        ...


def collect(session: DebuggerSession, commands: Sequence[str], prompt: re.Pattern[str],
            timeout: float = DDB_TIMEOUT) -> list[tuple[str, str]]:
    """Run *commands* at the debugger prompt; ``(command, output)`` pairs.

    A command whose prompt does not come back within *timeout* ends the
    collection with the text seen so far (a wedged debugger must not hang the
    run): the pair's output then ends with a note.
    """
    out: list[tuple[str, str]] = []
    for cmd in commands:
        session.send_line(cmd)
        try:
            text = session.expect_quiet(prompt, timeout)
        except Exception as exc:          # noqa: BLE001 - the transcript keeps what came
            out.append((cmd, f"[no debugger prompt within {timeout:g} s: "
                             f"{type(exc).__name__}]\n"))
            break
        out.append((cmd, _strip_echo(text, cmd)))
    return out


def _strip_echo(text: str, cmd: str) -> str:
    """The output after the echoed command line (the text before the prompt may also
    hold what came before the command), without carriage returns."""
    clean = text.replace("\r", "")
    echo = clean.rfind(cmd.strip() + "\n")
    return clean[echo + len(cmd.strip()) + 1:] if echo >= 0 else clean


def format_transcript(pairs: Sequence[tuple[str, str]], prompt: str = "ddb> ") -> str:
    """The collection as one text, each command after a prompt."""
    return "".join(f"{prompt}{cmd}\n{text}" for cmd, text in pairs)
