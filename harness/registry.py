"""Plain registries keyed by name, whose failed lookups list the valid names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from harness.errors import RegistryLookupError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named records (formats, models, guest OSes, images).

    >>> r = Registry[int]("format"); r.add("ept", 1); r["ept"]
    1
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register *item* under *name*; a name is registered once."""
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._items[name] = item
        return item

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise self.lookup_error(name) from None

    def lookup_error(self, name: str) -> RegistryLookupError:
        """The error for a miss: names the registry, suggests a close name, lists the valid."""
        return RegistryLookupError(self.what, name, list(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, record) pairs, sorted by name."""
        return sorted(self._items.items())
