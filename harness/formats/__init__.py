"""Registry of second-level page-table formats.

``FORMATS[name]`` gives a :class:`~harness.formats.base.Format`; an unknown
name raises an error that lists the registered ones.

>>> FORMATS.names()
['ept', 'npt', 'stage2', 'vpte']
"""

from __future__ import annotations

from harness.formats.base import Format, Mapping, StructuralFinding, WalkLimits, WalkResult
from harness.formats.ept import EPT
from harness.formats.npt import NPT
from harness.formats.stage2 import STAGE2
from harness.formats.vpte import VPTE
from harness.registry import Registry

__all__ = ["FORMATS", "Format", "Mapping", "StructuralFinding", "WalkLimits", "WalkResult"]

FORMATS: Registry[Format] = Registry("page-table format")
for _format in (EPT, NPT, STAGE2, VPTE):
    FORMATS.add(_format.name, _format)
