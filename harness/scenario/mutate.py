"""Mutations of scenario files, for fuzzing the loader (tests and benchmarks/fuzz).

Each mutation turns the text of a valid scenario into something a user (or an
attacker) could write: a byte flipped, a line dropped or doubled, a value replaced by
another type, a hostile YAML construct spliced in.  Deterministic for a given seed.

>>> mutate("a: 1\\nb: 2\\n", random.Random(4)) != "a: 1\\nb: 2\\n"
True
"""

from __future__ import annotations

import random

__all__ = ["mutate", "HOSTILE"]

# values and constructs that broke earlier loaders, and their neighbours
HOSTILE = (
    "0.0", "4096.0", ".nan", ".inf", "-.inf", "~", "null", "true", "'x'", "[]", "{}",
    "!!int zz", "!!float 1e999", "!!binary AAAA", "!!python/object:os.system x",
    "1" * 5000, "0x" + "f" * 40, "-1", "18446744073709551616", "\"\\x00\"", "\"a\\nb\"",
    "&a [*a]", "*nosuch", "&x 1", "{on: 1}", "{1: 2}", "[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]",
    "\"(unclosed\"", "'[a-'", "|\n  block", "\u0007", "\udcff", "on", "yes", "0o777",
)


def _flip(text: str, rng: random.Random) -> str:
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    if raw:
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    return raw.decode("utf-8", "surrogateescape")


def _lines(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i = rng.randrange(len(lines))
    choice = rng.randrange(3)
    if choice == 0:
        del lines[i]
    elif choice == 1:
        lines.insert(i, lines[rng.randrange(len(lines))])
    else:
        lines[i] = " " * rng.randrange(8) + lines[i].lstrip()
    return "".join(lines)


def _value(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    spots = [i for i, ln in enumerate(lines) if ":" in ln]
    if not spots:
        return text + rng.choice(HOSTILE)
    i = rng.choice(spots)
    key, _, _ = lines[i].partition(":")
    lines[i] = f"{key}: {rng.choice(HOSTILE)}\n"
    return "".join(lines)


def _splice(text: str, rng: random.Random) -> str:
    pos = rng.randrange(len(text) + 1)
    return text[:pos] + rng.choice(HOSTILE) + text[pos:]


MUTATIONS = (_flip, _lines, _value, _splice)


def mutate(text: str, rng: random.Random, rounds: int = 3) -> str:
    """*text* after 1..*rounds* random mutations."""
    for _ in range(rng.randrange(1, rounds + 1)):
        text = rng.choice(MUTATIONS)(text, rng)
    return text
