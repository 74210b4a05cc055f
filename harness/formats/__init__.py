"""Registry of second-level page-table formats.

``FORMATS[name]`` gives a :class:`~harness.formats.base.Format`; an unknown
name raises an error that lists the registered ones.
"""

from __future__ import annotations

from harness.formats.base import Format, Mapping, StructuralFinding, WalkLimits, WalkResult
from harness.registry import Registry

__all__ = ["FORMATS", "Format", "Mapping", "StructuralFinding", "WalkLimits", "WalkResult"]

FORMATS: Registry[Format] = Registry("page-table format")

from harness.formats import ept as _ept  # noqa: E402,F401  (registers "ept")
from harness.formats import npt as _npt  # noqa: E402,F401  (registers "npt")
from harness.formats import stage2 as _stage2  # noqa: E402,F401  (registers "stage2")
from harness.formats import vpte  # noqa: E402,F401  (registers vpte)
