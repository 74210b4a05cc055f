"""Kernel type answers kept on disk: an image's types are parsed once, not every run.

Parsing vmlinux's BTF takes seconds; discovery asks a few dozen questions of it
(offsets, sizes, signedness).  :class:`RecordedTypes` is a
:class:`~harness.ktypes.KernelTypes` that answers from a record kept beside the
image (the image's content fixes its types) and loads the real types only for
a question the record does not hold, which it then adds.  A missing type or
member is recorded too, and raised again as :class:`~harness.ktypes.TypeLookupError`.

>>> class Two:
...     def offsetof(self, spec, path): return 8
...     def sizeof(self, spec): return 16
...     def member_type(self, spec, path): return "u64"
...     def is_signed(self, spec): return False
>>> import tempfile, pathlib; d = pathlib.Path(tempfile.mkdtemp())
>>> RecordedTypes(Two, d / "t.json").offsetof("struct kvm", "vm_list")
8
>>> RecordedTypes(lambda: None, d / "t.json").offsetof("struct kvm", "vm_list")   # no parse
8
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.ktypes import KernelTypes, TypeLookupError

__all__ = ["RecordedTypes", "MemberRef"]


@dataclass(frozen=True)
class MemberRef:
    """The type record of a member, by name: what :meth:`RecordedTypes.member_type` hands out."""

    spec: str
    path: str

    def __str__(self) -> str:
        return f"{self.spec}.{self.path}"


class RecordedTypes:
    """Answers of *load()*'s types, recorded in *path* (JSON) and read back first."""

    def __init__(self, load: Callable[[], KernelTypes | None], path: Path) -> None:
        self._load = load
        self._real: KernelTypes | None = None
        self.path = path
        try:
            self._answers: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._answers = {}
        self.loaded = False

    def _types(self) -> KernelTypes:
        if self._real is None:
            real = self._load()
            if real is None:
                raise TypeLookupError("kernel types are not available")
            self._real, self.loaded = real, True
        return self._real

    def _ask(self, key: str, compute: Callable[[KernelTypes], Any]) -> Any:
        if key not in self._answers:
            try:
                value: Any = {"value": compute(self._types())}
            except TypeLookupError as exc:
                value = {"error": str(exc)}
            self._answers[key] = value
            self._save()
        answer = self._answers[key]
        if "error" in answer:
            raise TypeLookupError(answer["error"])
        return answer["value"]

    def __reduce__(self) -> tuple[Callable[[KernelTypes], KernelTypes], tuple[KernelTypes]]:
        """Pickled (a kept core's ``types.pickle``) as the real types, parsed if need be:
        the loader is a closure over the image, and a core outlives the image's cache."""
        return _as_is, (self._types(),)

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self._answers, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass          # a read-only cache still answers, only slower next time
        finally:
            tmp.unlink(missing_ok=True)

    def _record(self, spec: Any) -> Any:
        """The real record behind a name or a MemberRef."""
        if isinstance(spec, MemberRef):
            return self._types().member_type(spec.spec, spec.path)
        return spec

    def offsetof(self, spec: str, path: str) -> int:
        """Byte offset of member *path* in *spec*."""
        return int(self._ask(f"offsetof {spec} {path}",
                             lambda t: t.offsetof(spec, path)))

    def sizeof(self, spec: Any) -> int:
        """Size of a type name or of a member's type."""
        return int(self._ask(f"sizeof {spec}", lambda t: t.sizeof(self._record(spec))))

    def member_type(self, spec: str, path: str) -> MemberRef:
        """The member's type, as a reference that sizeof and is_signed accept."""
        self._ask(f"member {spec} {path}", lambda t: str(t.member_type(spec, path)))
        return MemberRef(spec, path)

    def is_signed(self, spec: Any) -> bool:
        """Whether an integer type (name or member reference) is signed."""
        return bool(self._ask(f"signed {spec}", lambda t: t.is_signed(self._record(spec))))


def _as_is(types: KernelTypes) -> KernelTypes:
    """What an unpickled :class:`RecordedTypes` is: the types it stood for."""
    return types
