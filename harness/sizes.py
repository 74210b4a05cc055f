"""The one parser of addresses and sizes as scenarios and recipes write them.

>>> parse_addr("0x1000"), parse_addr(4096), parse_size("64K"), parse_size("0x10000")
(4096, 4096, 65536, 65536)
>>> format_size(1 << 30)
'1G'
"""

from __future__ import annotations

import re

__all__ = ["parse_addr", "parse_size", "format_size", "SUFFIX"]

SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"([0-9]+)([KMGT]?)")


def parse_addr(value: int | str) -> int:
    """An address: an integer or a ``0x`` hex string."""
    if isinstance(value, bool):
        raise ValueError(f"bad address {value!r}")
    return value if isinstance(value, int) else int(value, 16)


def parse_size(value: int | str) -> int:
    """A size: integer, ``0x`` hex string, or decimal with a K/M/G/T suffix."""
    if isinstance(value, bool):
        raise ValueError(f"bad size {value!r}")
    if isinstance(value, int):
        return value
    if value.lower().startswith("0x"):
        return int(value, 16)
    m = _SIZE.fullmatch(value)
    if not m:
        raise ValueError(f"bad size {value!r}")
    return int(m.group(1)) * SUFFIX[m.group(2)]


def format_size(size: int) -> str:
    """The shortest K/M/G/T form of a size that has one, else the decimal number."""
    for suffix in ("T", "G", "M", "K"):
        if size and size % SUFFIX[suffix] == 0:
            return f"{size // SUFFIX[suffix]}{suffix}"
    return str(size)
