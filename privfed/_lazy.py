"""PEP 562 lazy exports shared by ``privfed`` and its subpackages.

A package lists ``{public name: module}`` and gets a module ``__getattr__`` that imports
the module on first use (so ``import privfed`` or ``import privfed.client.stages`` does
not pull torch) and caches the value in the package namespace, and a ``__dir__`` that
shows the public names before they are loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: MutableMapping[str, Any], exports: Mapping[str, str], public: Iterable[str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``(__getattr__, __dir__)`` pair of ``package`` whose globals are ``namespace``."""
    names = frozenset(public)

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | names)

    return __getattr__, __dir__
