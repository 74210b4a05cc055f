"""Failure rates of repeated runs, with a 95 % confidence interval.

A race that failed 3 times in 200 iterations has a rate near 1.5 %, but 200 more
iterations might show 0.5 % or 4 %: the interval says how far to trust it.  The
Wilson score interval is used (it stays inside [0, 1] and behaves at 0 and n
failures, unlike the normal approximation).

>>> r = Rate.of(failures=3, iterations=200, first_failure=17, seconds=124.0)
>>> round(r.low, 4), round(r.high, 4)
(0.0051, 0.0432)
>>> r.text()
'3/200 failed (1.5 %, 95 % CI 0.51-4.3 %), first at iteration 17; 0.62 s per iteration'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["wilson", "Rate", "Z95"]

Z95 = 1.959963984540054         # the normal quantile of 0.975


def wilson(failures: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of *failures* in *n* trials ((0, 1) for n = 0).

    >>> wilson(0, 10)[0], round(wilson(0, 10)[1], 3)
    (0.0, 0.278)
    """
    if n <= 0:
        return 0.0, 1.0
    if failures <= 0:                       # exactly 0 at the bottom, not rounding noise
        return 0.0, z * z / (n + z * z)
    p = failures / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _pct(x: float) -> str:
    """A percentage with two significant digits, never in exponent form."""
    p = 100 * x
    return "0" if p == 0 else f"{p:.0f}" if p >= 10 else f"{p:.2g}" if p >= 0.01 else f"{p:.4f}"


@dataclass(frozen=True)
class Rate:
    """Failures over iterations, the interval, the first failing iteration, time per one."""

    failures: int
    iterations: int
    low: float
    high: float
    first_failure: int | None
    seconds_per_iteration: float

    @classmethod
    def of(cls, failures: int, iterations: int, first_failure: int | None,
           seconds: float) -> Rate:
        """From counts and the time the iterations took in all."""
        low, high = wilson(failures, iterations)
        return cls(failures, iterations, low, high, first_failure,
                   seconds / iterations if iterations else 0.0)

    @property
    def rate(self) -> float:
        return self.failures / self.iterations if self.iterations else 0.0

    def text(self) -> str:
        """One line for people."""
        first = f", first at iteration {self.first_failure}" if self.first_failure else ""
        return (f"{self.failures}/{self.iterations} failed ({_pct(self.rate)} %, 95 % CI "
                f"{_pct(self.low)}-{_pct(self.high)} %){first}; "
                f"{self.seconds_per_iteration:.2f} s per iteration")

    def to_json(self) -> dict[str, Any]:
        """The ``rate`` record of ``repeat.json`` and ``result.json``."""
        return {"failures": self.failures, "iterations": self.iterations,
                "rate": round(self.rate, 6), "ci95": [round(self.low, 6), round(self.high, 6)],
                "first_failure": self.first_failure,
                "seconds_per_iteration": round(self.seconds_per_iteration, 4)}
