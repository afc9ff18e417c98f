"""A registered strategy is never silently bypassed, and a non-finite aggregate is never applied."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pytest

import privfed
from privfed.adapters import AdapterLayout
from privfed.config import SecAggConfig, ServerConfig
from privfed.errors import ConfigError
from privfed.privacy import DPFedAvgServer
from privfed.server import FedAdam, FedAvg, FederatedServer, make_strategy, register_strategy
from privfed.server.strategies import strategy_names, unregister_strategy
from privfed.transport import ClientUpdate
from tests.fakes import ScriptedTransport


class TrimmedMean:
    """Coordinate-wise mean after dropping the largest and smallest value (a robust aggregator)."""

    def __init__(self) -> None:
        self.aggregate_calls = 0

    def aggregate(self, deltas: npt.NDArray[np.float32], *, weights: npt.ArrayLike) -> npt.NDArray[np.float32]:
        self.aggregate_calls += 1
        ordered = np.sort(deltas, axis=0)
        return ordered[1:-1].mean(axis=0).astype(np.float32)

    def apply(
        self, global_vector: npt.NDArray[np.float32], aggregate: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        return (global_vector + aggregate).astype(np.float32)

    def state_arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        return {}

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[np.float32]]) -> None:
        return None


def server(strategy: object, *, user_dp: bool = False, secagg: bool = False, dim: int = 4) -> FederatedServer:
    return FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (dim,))]),
        global_vector=np.zeros(dim, dtype=np.float32),
        strategy=strategy,  # type: ignore[arg-type]
        num_clients=6,
        clients_per_round=3,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True) if secagg else None,
        user_dp=DPFedAvgServer(noise_multiplier=1.0, clip_norm=1.0, expected_clients=3, adaptive=None)
        if user_dp
        else None,
    )


def replies(values: Callable[[int], np.ndarray]) -> Callable[[Sequence[int]], list[bytes]]:
    return lambda cohort: [
        ClientUpdate(round=1, client_id=c, num_examples=5, train_loss=1.0, delta=values(c)).to_bytes() for c in cohort
    ]


def test_a_robust_strategy_runs_in_a_plain_round() -> None:
    strategy = TrimmedMean()
    s = server(strategy)
    s.run_round(1, ScriptedTransport(replies(lambda c: np.full(4, float(c), dtype=np.float32))))
    assert strategy.aggregate_calls == 1


@pytest.mark.parametrize(
    ("user_dp", "secagg", "mode"),
    [(True, False, "user-level DP"), (False, True, "secure"), (True, True, "user-level DP and secure")],
)
def test_a_robust_strategy_is_refused_where_it_would_be_bypassed(user_dp: bool, secagg: bool, mode: str) -> None:
    with pytest.raises(ConfigError, match=f"TrimmedMean cannot run under {mode}"):
        server(TrimmedMean(), user_dp=user_dp, secagg=secagg)


@pytest.mark.parametrize("strategy", [FedAvg(), FedAdam(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)])
def test_mean_strategies_compose_with_dp_and_secagg(strategy: object) -> None:
    server(strategy, user_dp=True, secagg=True)


def test_register_strategy_is_public_and_overwritable() -> None:
    assert privfed.register_strategy is register_strategy
    assert privfed.DatasetSpec is not None
    register_strategy("trimmed_mean_test", lambda cfg: TrimmedMean(), overwrite=True)
    with pytest.raises(ConfigError, match="already registered"):
        register_strategy("trimmed_mean_test", lambda cfg: TrimmedMean())
    register_strategy("trimmed_mean_test", lambda cfg: FedAvg(), overwrite=True)  # a notebook re-runs its cell
    try:
        assert isinstance(make_strategy(ServerConfig(strategy="trimmed_mean_test")), FedAvg)
    finally:
        unregister_strategy("trimmed_mean_test")
    assert "trimmed_mean_test" not in strategy_names()


class NaNApply(FedAvg):
    def apply(
        self, global_vector: npt.NDArray[np.float32], aggregate: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        return np.full_like(global_vector, np.nan)


def test_a_non_finite_model_from_the_strategy_is_not_applied() -> None:
    s = server(NaNApply())
    result = s.run_round(1, ScriptedTransport(replies(lambda c: np.ones(4, dtype=np.float32))))
    assert result.aggregate_rejected is not None and "finite" in result.aggregate_rejected
    np.testing.assert_array_equal(s.global_vector, np.zeros(4, dtype=np.float32))


class HugeMean(FedAvg):
    def aggregate(self, deltas: npt.NDArray[np.float32], *, weights: npt.ArrayLike) -> npt.NDArray[np.float32]:
        return np.full(deltas.shape[1], np.inf, dtype=np.float32)


def test_a_non_finite_aggregate_is_not_applied() -> None:
    s = server(HugeMean())
    result = s.run_round(1, ScriptedTransport(replies(lambda c: np.ones(4, dtype=np.float32))))
    assert result.aggregate_rejected == "the aggregate has non-finite values"
    assert result.update_norm == 0.0
    np.testing.assert_array_equal(s.global_vector, np.zeros(4, dtype=np.float32))


class CountingFedAvg(FedAvg):
    """FedAvg that counts which aggregation hook the server called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def aggregate(self, deltas: npt.NDArray[np.float32], *, weights: npt.ArrayLike) -> npt.NDArray[np.float32]:
        self.calls.append("aggregate")
        return super().aggregate(deltas, weights=weights)

    def aggregate_sum(self, total: npt.NDArray[np.floating], *, weight: float) -> npt.NDArray[np.float32]:
        self.calls.append(f"aggregate_sum/{weight:g}")
        return super().aggregate_sum(total, weight=weight)


def test_user_dp_wraps_the_strategy_instead_of_replacing_it() -> None:
    """DP-FedAvg hands its noised sum to the strategy's aggregate_sum, over the expected cohort (3)."""
    strategy = CountingFedAvg()
    s = server(strategy, user_dp=True)
    s.run_round(1, ScriptedTransport(replies(lambda c: np.ones(4, dtype=np.float32))))
    assert strategy.calls == ["aggregate_sum/3"]
    plain = CountingFedAvg()
    server(plain).run_round(1, ScriptedTransport(replies(lambda c: np.ones(4, dtype=np.float32))))
    assert plain.calls == ["aggregate"]
