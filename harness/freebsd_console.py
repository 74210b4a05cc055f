"""FreeBSD console strings as data, and the panic report: the getty's login prompt, the
panic lines, ddb(4)'s prompt and the commands collected, the reboot notice of a kernel
without DDB.  Here, where both the guest record (:mod:`harness.guests.freebsd`) and the
image builder (:mod:`harness.images.freebsd_builder`) take them.

The strings are the kernel's: ``kern/kern_shutdown.c`` ``vpanic()`` (``panic:``,
``cpuid =``, ``time =``), ``subr_kdb.c`` (``KDB: stack backtrace:``, ``KDB: enter:``),
``ddb/db_command.c`` (the ``db> `` prompt), ``amd64/amd64/trap.c`` (``Fatal trap N:
...``), ``kern_reboot`` (``Automatic reboot in N seconds``).

>>> LOGIN.search("FreeBSD/amd64 (freebsd) (ttyu0)\n\nlogin: ") is not None
True
"""

from __future__ import annotations

import re

from harness import panic_report
from harness.console import LINE_START, Console, ConsoleProfile

__all__ = ["CONSOLE", "LOGIN", "DDB_PROMPT", "DDB_COMMANDS", "REBOOT_NOTICE", "PANIC_LINE",
           "PANIC_PATTERNS", "DDB_WAIT", "freebsd_debugger", "panic_text"]

LOGIN = re.compile(r"(?m)^login: $")             # getty(8) after "FreeBSD/amd64 (host) (tty)"
DDB_PROMPT = re.compile(r"db> ")                 # ddb/db_command.c db_command_loop()
DDB_COMMANDS = ("show panic", "bt", "ps")
# kern_shutdown.c: shutdown_panic() / kern_reboot()
REBOOT_NOTICE = re.compile(r"Automatic reboot in \d+ seconds|Rebooting\.\.\.|cpu_reset")
PANIC_LINE = re.compile(r"(?m)^(?:panic: |Fatal trap \d+: )")
DDB_WAIT = panic_report.DEBUGGER_WAIT            # seconds for ddb's prompt or the reboot
PANIC_PATTERNS = (LINE_START + r"panic: ", LINE_START + r"Fatal trap \d+: ",
                  LINE_START + r"KDB: enter: ", r"\ndb> ")


def panic_text(log: str) -> str:
    """The console text from the first panic (or fatal trap) line on, ``\\r`` removed."""
    return panic_report.panic_text(log, PANIC_LINE)


def freebsd_debugger(console: Console) -> str:
    """After a panic: ddb's ``show panic``, ``bt`` and ``ps``; without ddb, the panic and
    backtrace as the kernel printed them before rebooting."""
    return panic_report.debugger_or_reboot(
        console, prompt=DDB_PROMPT, commands=DDB_COMMANDS, reboot=REBOOT_NOTICE,
        panic_line=PANIC_LINE, wait=DDB_WAIT)


CONSOLE = ConsoleProfile(name="freebsd", prompt=r"[#$] $", panic=PANIC_PATTERNS,
                         debugger=freebsd_debugger)
