"""Server side: strategies and round orchestration."""

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
