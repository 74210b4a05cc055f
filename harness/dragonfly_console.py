"""DragonFly console strings as data, and the panic report: the getty's login prompt, the
shell set-up after it, the panic lines, ddb's prompt and the commands collected, the
reboot notice.  Here, where both the guest record (:mod:`harness.guests.dragonfly`) and
the image builder (:mod:`harness.images.dragonfly_builder`) take them.  [inferred], as
BSD-GUESTS.md section 3.4 says: ``panic:``, ``Debugger("panic")``, ``Stopped at``,
``db>``, and the FreeBSD-derived ``Automatic reboot in N seconds``.

>>> LOGIN.search("DragonFly/x86_64 (Amnesiac) (ttyd0)\n\nlogin: ") is not None
True
"""

from __future__ import annotations

import re

from harness import panic_report
from harness.console import LINE_START, Console, ConsoleProfile

__all__ = ["CONSOLE", "LOGIN", "DDB_PROMPT", "DDB_COMMANDS", "REBOOT_NOTICE", "PANIC_LINE",
           "PANIC_PATTERNS", "SHELL_SETUP", "dragonfly_debugger"]

LOGIN = re.compile(r"(?m)^(?:\S+ )?login: $")     # getty after "DragonFly/x86_64 (host) (tty)"
DDB_PROMPT = re.compile(r"db> ")
DDB_COMMANDS = ("trace", "ps", "show registers")
REBOOT_NOTICE = re.compile(r"Automatic reboot in \d+ seconds|Rebooting\.\.\.|cpu_reset")
PANIC_LINE = re.compile(r"(?m)^(?:panic: |Fatal trap \d+: )")
PANIC_PATTERNS = (LINE_START + r"panic: ", LINE_START + r"Fatal trap \d+: ", r"\ndb> ")
# after the login: a Bourne shell with the system's directories
SHELL_SETUP = ("exec /bin/sh",
               "export PATH=/sbin:/bin:/usr/sbin:/usr/bin:/usr/local/sbin:/usr/local/bin")


def dragonfly_debugger(console: Console) -> str:
    """After a panic: ddb's ``trace``, ``ps`` and ``show registers``; without ddb, the
    panic as the kernel printed it before rebooting."""
    return panic_report.debugger_or_reboot(
        console, prompt=DDB_PROMPT, commands=DDB_COMMANDS, reboot=REBOOT_NOTICE,
        panic_line=PANIC_LINE)


CONSOLE = ConsoleProfile(name="dragonfly", prompt=r"[#$] $", panic=PANIC_PATTERNS,
                         debugger=dragonfly_debugger)
