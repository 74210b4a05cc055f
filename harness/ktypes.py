"""What the harness asks of a kernel's type information, whatever carries it.

Linux gives BTF (:class:`harness.btf.Btf`); OpenBSD and FreeBSD give CTF;
DragonFly gives DWARF.  Discovery reads typed members through
:class:`KernelTypes` only, so it does not care which.  Type records are opaque
to callers: they come from :meth:`KernelTypes.member_type` and go back into
:meth:`KernelTypes.sizeof` and :meth:`KernelTypes.is_signed`.

A missing type or member raises :class:`TypeLookupError`; callers that probe
("has this kernel member X?") catch that and nothing broader.
"""

from __future__ import annotations

from typing import Any, Protocol

from harness.errors import InfraError

__all__ = ["KernelTypes", "TypeLookupError"]


class TypeLookupError(InfraError):
    """A type or member the harness needs is not in the kernel's type information."""


class KernelTypes(Protocol):
    """Sizes and member offsets of a kernel's C types (``"struct kvm"``, dotted paths)."""

    def offsetof(self, spec: str, path: str) -> int:
        """Byte offset of member *path* (``"arch.mmu"``, ``"vcpus[2]"``) in type *spec*."""
        ...

    def sizeof(self, spec: Any) -> int:
        """Size in bytes of a type name or record."""
        ...

    def member_type(self, spec: str, path: str) -> Any:
        """The type record of member *path* of *spec*."""
        ...

    def is_signed(self, spec: Any) -> bool:
        """Whether an integer type (name or record) is signed."""
        ...
