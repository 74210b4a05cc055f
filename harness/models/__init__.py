"""Registry of hypervisor reference models (``MODELS[name]``)."""

from __future__ import annotations

from harness.models.base import (Access, Backing, DictBacking, Expectation, ExpectedPage,
                                 MemRange, Model, VMDesc)
from harness.registry import Registry

__all__ = ["MODELS", "Access", "Backing", "DictBacking", "Expectation", "ExpectedPage",
           "MemRange", "Model", "VMDesc"]

MODELS: Registry[Model] = Registry("hypervisor model")

from harness.models import kvm  # noqa: E402,F401  (registers kvm-x86, kvm-arm64)
from harness.models import openbsd  # noqa: E402,F401  (registers openbsd-vmm, openbsd-vmm-old)
from harness.models import vkernel  # noqa: E402,F401  (registers dragonfly-vkernel)
from harness.models import bhyve  # noqa: E402,F401  (registers bhyve)
