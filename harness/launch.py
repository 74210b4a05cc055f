"""The ``slatcheck`` program's first lines: Ctrl-C and SIGTERM are held from the start.

Importing the harness takes a moment.  Until :func:`harness.cli.main` installs its
own handlers, a SIGINT or SIGTERM is only noted (:class:`harness.deadline.Held`); ``main`` then ends
the command as interrupted (exit status 1, no traceback) instead of Python dying of
the signal, or printing a KeyboardInterrupt traceback, half-way through its imports.
"""

from __future__ import annotations

import signal

from harness.deadline import Held

__all__ = ["entry"]


def entry() -> None:
    """The ``slatcheck`` console script and ``python -m harness``."""
    held = Held()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, held)
    from harness.cli import entry as run
    run()
