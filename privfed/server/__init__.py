"""Server side: strategies and round orchestration."""

from privfed.server.server import FederatedServer, RoundResult, sample_cohort, validate_update
from privfed.server.strategies import FedAdam, FedAvg, Strategy, make_strategy, strategy_names, weighted_mean

__all__ = [
    "FedAdam",
    "FedAvg",
    "FederatedServer",
    "RoundResult",
    "Strategy",
    "make_strategy",
    "sample_cohort",
    "strategy_names",
    "validate_update",
    "weighted_mean",
]
