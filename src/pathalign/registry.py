"""A tiny name → object registry, one per extension point (DESIGN §8)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import PathalignError

T = TypeVar("T")


class UnknownNameError(PathalignError, KeyError):
    """A name no entry of a registry has (a ``KeyError`` too, for callers that catch that)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects; filled by the ``register`` decorator where each is defined.

    Args:
        kind: what the registry holds, used in error messages ("attention backend", ...).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``; :class:`UnknownNameError` (a ``KeyError``) listing the known names otherwise."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
