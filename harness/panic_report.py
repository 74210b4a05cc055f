"""After a BSD panic: the kernel debugger's report, or the panic as the kernel printed it.

A FreeBSD or DragonFly kernel with DDB stops at the ``db>`` prompt after a
panic; one without it (or with ``debug.debugger_on_panic=0``) prints the panic
and a backtrace and reboots.  :func:`debugger_or_reboot` waits a little for
either, then runs the debugger's commands (:func:`harness.ddb.collect`) or keeps
the console text from the first panic line on.  The prompt, commands and
notices are the OS's (:mod:`harness.guests.freebsd`, :mod:`harness.guests.dragonfly`).

>>> panic_text("boot\\r\\npanic: oops\\r\\ntrace\\r\\n", re.compile(r"(?m)^panic: "))
'panic: oops\\ntrace\\n'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from harness.console import Console, ConsoleError, ConsoleTimeout
from harness.ddb import collect, format_transcript

__all__ = ["panic_text", "debugger_or_reboot", "DEBUGGER_WAIT"]

DEBUGGER_WAIT = 20.0              # seconds for the debugger's prompt or the reboot notice


def panic_text(log: str, panic_line: re.Pattern[str]) -> str:
    """The console text from the first panic line on, ``\\r`` removed (else its tail)."""
    clean = log.replace("\r", "")
    m = panic_line.search(clean)
    return clean[m.start():] if m else clean[-4000:]


def _panic_log(console: Console, panic_line: re.Pattern[str]) -> str:
    try:
        return panic_text(console.log_path.read_text(errors="replace"), panic_line)
    except OSError:
        return ""


def debugger_or_reboot(console: Console, *, prompt: re.Pattern[str],
                       commands: Sequence[str], reboot: re.Pattern[str],
                       panic_line: re.Pattern[str], shown_prompt: str = "db> ",
                       wait: float = DEBUGGER_WAIT) -> str:
    """The debugger's answers to *commands*, or the kernel's own report up to *reboot*."""
    log = _panic_log(console, panic_line)
    if not prompt.search(log) and not reboot.search(log):
        try:
            console.expect_quiet(re.compile(f"{prompt.pattern}|{reboot.pattern}"),
                                 timeout=wait)
        except (ConsoleTimeout, ConsoleError):
            pass                      # QEMU gone (-no-reboot) or silent: keep what came
        log = _panic_log(console, panic_line)
    if prompt.search(log):
        return format_transcript(collect(console, commands, prompt), prompt=shown_prompt)
    return f"[no debugger prompt: the kernel's own report up to its reboot]\n{log}"
