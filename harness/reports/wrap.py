"""Lines that fit a width: prose wrapped at spaces, shell commands with ``\\`` continuations.

A mail's body keeps every line within 72 columns.  A shell command stays one command
when pasted: it breaks between words with `` \\`` and, inside a word longer than a
line, with a backslash-newline between separately quoted pieces (the shell joins
them again).

>>> fit("    a b c d e f", 9)
['    a b c', '      d e', '      f']
>>> print("\\n".join(shell_lines(["slatcheck", "run", "a/b/c.yaml"], 16)))
slatcheck run \\
    a/b/c.yaml
"""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Sequence

__all__ = ["fit", "fit_all", "shell_lines"]

CONTINUE = "    "


def fit(line: str, width: int) -> list[str]:
    """*line* wrapped at spaces into lines of at most *width* columns.

    Continuations keep the line's indentation plus two spaces; a word longer than a
    line is broken (a path in prose: the reader can still join it).
    """
    if len(line) <= width:
        return [line]
    indent = line[:len(line) - len(line.lstrip())]
    return textwrap.wrap(line.strip(), width, initial_indent=indent,
                         subsequent_indent=indent + "  ", break_on_hyphens=False) or [""]


def fit_all(text: str, width: int) -> list[str]:
    """Every line of *text* fitted (:func:`fit`)."""
    return [piece for line in text.splitlines() for piece in fit(line, width)]


def _pieces(word: str, first: int, rest: int) -> list[str]:
    """*word* as shell-quoted pieces: the first of at most *first* columns, the others
    of at most *rest* (at least one character each)."""
    out: list[str] = []
    room = first
    while word:
        n = len(word)
        while n > 1 and len(shlex.quote(word[:n])) > room:
            n -= 1
        out.append(shlex.quote(word[:n]))
        word, room = word[n:], rest
    return out


def shell_lines(argv: Sequence[str], width: int, indent: str = "") -> list[str]:
    """*argv* as a shell command of lines of at most *width* columns.

    Words are separated by `` \\`` line ends; a word too long for a line of its own is
    split into quoted pieces joined by a backslash-newline, and its continuation lines
    start in the first column (indentation there would split the word).
    """
    lines: list[str] = []
    line = indent
    for word in argv:
        quoted = shlex.quote(word)
        if line.strip() and len(line) + 1 + len(quoted) + 2 <= width:
            line += " " + quoted
            continue
        if line.strip():
            lines.append(line + " \\")
            line = indent + CONTINUE
        if len(line) + len(quoted) + 2 <= width:
            line += quoted
            continue
        pieces = _pieces(word, width - len(line) - 1, width - 3)
        lines += [(line if i == 0 else "") + p + "\\" for i, p in enumerate(pieces[:-1])]
        line = pieces[-1] if len(pieces) > 1 else line + pieces[-1]
    return lines + [line]
