from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "privfed",
    "privfed.adapters",
    "privfed.client",
    "privfed.compression",
    "privfed.data",
    "privfed.experiments",
    "privfed.models",
    "privfed.privacy",
    "privfed.secagg",
    "privfed.server",
    "privfed.transport",
    "attacks",
    "attacks.audit",
    "attacks.inversion",
    "attacks.membership",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_unique_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(set(exported))
    for symbol in exported:
        assert getattr(module, symbol) is not None, f"{name}.{symbol}"
