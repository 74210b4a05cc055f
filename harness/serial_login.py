"""Log in on a getty over the serial console (the BSDs: ``<host> login:`` then ``Password:``).

>>> LOGIN.search("\\r\\nl1 login: ") is not None, LOGIN.search("last login: Mon") is None
(True, True)
"""

from __future__ import annotations

import re

from harness.console import Console, ConsoleTimeout
from harness.errors import InfraError

__all__ = ["LOGIN", "PASSWORD", "INCORRECT", "serial_login"]

LOGIN = re.compile(r"(?m)^\S+ login: $")       # getty: "<hostname> login: "
PASSWORD = re.compile(r"Password:")
INCORRECT = re.compile(r"Login incorrect")


def serial_login(console: Console, user: str, password: str, timeout: float,
                 prompt: re.Pattern[str] = LOGIN) -> None:
    """Wait for the login prompt, log in as *user*, wait until a shell answers.

    *prompt* is the getty's login prompt: OpenBSD's ``<host> login:`` by default,
    FreeBSD's getty prints a bare ``login:`` after its banner.

    An empty line is typed every 30 s while no prompt comes (the prompt may have
    been printed before the console was attached).  A refused password is an
    :class:`~harness.errors.InfraError`.
    """
    waited = 0.0
    while True:
        try:
            console.expect(prompt, timeout=min(30.0, max(1.0, timeout - waited)))
            break
        except ConsoleTimeout:
            waited += 30.0
            if waited >= timeout:
                raise
            console.send_line("")
    console.send_line(user)
    if password:
        console.expect(PASSWORD, timeout=60)
        console.send_line(password)
    try:
        console.expect(INCORRECT, timeout=3)
    except ConsoleTimeout:
        console.wait_for_shell(timeout=120)
        return
    raise InfraError(f"the guest refused the login of {user!r} (wrong password in the "
                     "image's manifest?)")
