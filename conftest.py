"""Repository test configuration.

The scenario collector is the installed pytest plugin (``harness.pytest_plugin``,
entry point ``pytest11``), so ``pytest scenarios/`` works from any directory.
Here: the hypothesis profiles (``ci``, derandomised so that a CI failure
reproduces, is the default; ``HYPOTHESIS_PROFILE=dev`` explores anew each run).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
