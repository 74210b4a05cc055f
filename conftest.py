"""Repository test configuration.

The scenario collector is the installed pytest plugin (``harness.pytest_plugin``,
entry point ``pytest11``), so ``pytest scenarios/`` works from any directory.
Here: the hypothesis profiles (``ci``, derandomised so that a CI failure
reproduces, is the default; ``HYPOTHESIS_PROFILE=dev`` explores anew each run).
The fixture ``sigint_raises``: Python's own SIGINT handler for one test, since a run
started in the background by a shell (``cmd &``) inherits SIGINT ignored.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt during the test, even if the run ignores it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
