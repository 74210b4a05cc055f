"""Registry of hypervisor reference models (``MODELS[name]``).

>>> MODELS.names()
['bhyve', 'dragonfly-vkernel', 'kvm-arm64', 'kvm-x86', 'openbsd-vmm', 'openbsd-vmm-old']
"""

from __future__ import annotations

from harness.models.base import (
    Access,
    Backing,
    DictBacking,
    Expectation,
    ExpectedPage,
    MemRange,
    Model,
    VMDesc,
)
from harness.models.bhyve import BHYVE
from harness.models.kvm import KVM_ARM64, KVM_X86
from harness.models.openbsd import OPENBSD_VMM, OPENBSD_VMM_OLD
from harness.models.vkernel import DRAGONFLY_VKERNEL
from harness.registry import Registry

__all__ = ["MODELS", "Access", "Backing", "DictBacking", "Expectation", "ExpectedPage",
           "MemRange", "Model", "VMDesc"]

MODELS: Registry[Model] = Registry("hypervisor model")
for _model in (BHYVE, KVM_X86, KVM_ARM64, OPENBSD_VMM, OPENBSD_VMM_OLD, DRAGONFLY_VKERNEL):
    MODELS.add(_model.name, _model)
