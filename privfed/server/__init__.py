"""Server side: strategies and round orchestration.

Importing ``privfed.server`` (or ``privfed.server.strategies``, which config
validation does to list the registered strategies) is cheap: each public name is
imported from its module the first time it is used (PEP 562 module
``__getattr__``, as in ``privfed/__init__.py``), so the round orchestration in
``privfed.server.server`` and what it pulls in load only when needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privfed._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from privfed.server.server import (
        FederatedServer,
        RoundResult,
        check_strategy_composes,
        sample_cohort,
        validate_update,
    )
    from privfed.server.strategies import (
        FedAdam,
        FedAdamConfig,
        FedAvg,
        Strategy,
        make_strategy,
        register_strategy,
        strategy_names,
        weighted_mean,
    )

__all__ = [
    "FedAdam",
    "FedAdamConfig",
    "FedAvg",
    "FederatedServer",
    "RoundResult",
    "Strategy",
    "check_strategy_composes",
    "make_strategy",
    "register_strategy",
    "sample_cohort",
    "strategy_names",
    "validate_update",
    "weighted_mean",
]

_SOURCES: dict[str, tuple[str, ...]] = {
    "privfed.server.server": (
        "FederatedServer",
        "RoundResult",
        "check_strategy_composes",
        "sample_cohort",
        "validate_update",
    ),
    "privfed.server.strategies": (
        "FedAdam",
        "FedAdamConfig",
        "FedAvg",
        "Strategy",
        "make_strategy",
        "register_strategy",
        "strategy_names",
        "weighted_mean",
    ),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _SOURCES.items() for name in names}

if not TYPE_CHECKING:  # type checkers see the imports above; at run time names load on first use
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _EXPORTS, __all__)
