"""Shards: the scenarios of one run split over N jobs, each scenario in exactly one.

``--shard I/N`` (1 <= I <= N) runs the I-th part.  With durations from the history
the scenarios are balanced greedily, longest first, each onto the least-loaded
shard (a scenario the history does not know counts as the median of those it
knows); with none, they are dealt round-robin in name order.  Both are
deterministic: every job computes the same split from the same names and history.

>>> assign(["a", "b", "c", "d"], 2)
{'a': 1, 'b': 2, 'c': 1, 'd': 2}
>>> assign(["a", "b", "c", "d"], 2, {"a": 10.0, "b": 4.0, "c": 3.0, "d": 3.0})
{'a': 1, 'b': 2, 'c': 2, 'd': 2}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import median

from harness.errors import ScenarioError

__all__ = ["Shard", "parse_shard", "assign", "select"]

_FORM = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """The *index*-th (from 1) of *total* shards."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def parse_shard(text: str) -> Shard:
    """``I/N`` as a :class:`Shard`; anything else is a ScenarioError (a usage error)."""
    m = _FORM.match(text)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ScenarioError(f"--shard wants I/N with 1 <= I <= N, not {text!r}")
    return Shard(int(m[1]), int(m[2]))


def assign(names: Sequence[str], total: int,
           durations: Mapping[str, float] | None = None) -> dict[str, int]:
    """Each name's shard (1-based), as the module says."""
    unique = sorted(set(names))
    known = {n: durations[n] for n in unique if durations and n in durations}
    if not known:
        return {n: i % total + 1 for i, n in enumerate(unique)}
    guess = median(known.values())
    cost = {n: known.get(n, guess) for n in unique}
    load = [0.0] * total
    out: dict[str, int] = {}
    for n in sorted(unique, key=lambda n: (-cost[n], n)):
        k = min(range(total), key=lambda i: (load[i], i))
        load[k] += cost[n]
        out[n] = k + 1
    return out


def select(names: Sequence[str], shard: Shard,
           durations: Mapping[str, float] | None = None) -> list[bool]:
    """For each of *names* (in order), whether it belongs to *shard*."""
    where = assign(names, shard.total, durations)
    return [where[n] == shard.index for n in names]
