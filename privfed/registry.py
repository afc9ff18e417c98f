"""One small registry type behind every "add X in one call" extension point.

Models, datasets, partitioners, adapter methods, server strategies and
accountants each keep a :class:`Registry`; an unknown name raises that
registry's typed error listing what is registered.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from privfed.errors import PrivfedError

__all__ = ["Registry"]

_T = TypeVar("_T")


class Registry(Generic[_T]):
    """Named entries of one kind.

    Args:
        kind: what an entry is, for messages ("model", "adapter method", ...).
        error: the :class:`PrivfedError` subclass raised for unknown or duplicate names.
        field: the config field naming entries of this kind, if any (for messages).
    """

    def __init__(self, kind: str, *, error: type[PrivfedError], field: str | None = None) -> None:
        self.kind = kind
        self.error = error
        self.field = field
        self._entries: dict[str, _T] = {}

    def register(self, name: str, entry: _T, *, overwrite: bool = False) -> _T:
        """Add ``entry`` under ``name``; names are unique unless ``overwrite`` (a notebook re-running its cell)."""
        if name in self._entries and not overwrite:
            raise self.error(f"{self.kind} {name!r} is already registered (pass overwrite=True to replace it)")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (the registry's typed error if it is not registered)."""
        self.get(name)
        del self._entries[name]

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def get(self, name: str) -> _T:
        """The entry named ``name``; the registry's typed error if there is none."""
        try:
            return self._entries[name]
        except KeyError:
            where = self.field or f"unknown {self.kind}"
            raise self.error(f"{where} must be one of {', '.join(map(repr, self.names()))}; got {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries
