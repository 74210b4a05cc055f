"""Registry of hypervisor reference models (``MODELS[name]``)."""

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
from harness.registry import Registry

__all__ = ["MODELS", "Access", "Backing", "DictBacking", "Expectation", "ExpectedPage",
           "MemRange", "Model", "VMDesc"]

MODELS: Registry[Model] = Registry("hypervisor model")

# Each model module registers itself in MODELS when imported.
from harness.models import (  # noqa: E402,F401
    bhyve,  # bhyve
    kvm,  # kvm-x86, kvm-arm64
    openbsd,  # openbsd-vmm, openbsd-vmm-old
    vkernel,  # dragonfly-vkernel
)
