"""Property-based testing for your own federated, private and secure code.

``privfed.testing`` gives the hypothesis strategies and invariant checkers that
privfed's own tests use, so that a new upload stage, strategy, noise mechanism,
accountant or secure-aggregation transport can be tested against the same
properties (see ``docs/testing.md``)::

    from hypothesis import given
    from privfed.testing import check_decode_of_sum, strategies as pst

    @given(updates=pst.update_batches(64, max_clients=5))
    def test_my_stage(updates):
        check_decode_of_sum(MyStage(), updates)

The checkers (:mod:`privfed.testing.checkers`) are plain functions raising
``AssertionError`` and need nothing beyond privfed; the strategies
(:mod:`privfed.testing.strategies`, loaded on first use) need ``hypothesis``,
which privfed itself never imports.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from privfed.testing.checkers import (
    EpsilonFn,
    SecAggDriver,
    SumCodec,
    check_accountant,
    check_aggregate_from_sum,
    check_clipped_norm,
    check_decode_of_sum,
    check_noise_std,
    check_secure_sum_of_survivors,
    decode_error_bound,
    expected_survivors,
    noise_std_interval,
)

__all__ = [
    "EpsilonFn",
    "SecAggDriver",
    "SumCodec",
    "check_accountant",
    "check_aggregate_from_sum",
    "check_clipped_norm",
    "check_decode_of_sum",
    "check_noise_std",
    "check_secure_sum_of_survivors",
    "decode_error_bound",
    "expected_survivors",
    "noise_std_interval",
    "strategies",
]


def __getattr__(name: str) -> ModuleType:
    # The strategies import hypothesis: load them when asked for, so that the checkers work without it.
    if name == "strategies":
        return importlib.import_module("privfed.testing.strategies")
    raise AttributeError(f"module 'privfed.testing' has no attribute {name!r}")
