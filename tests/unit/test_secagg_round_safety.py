"""The threshold rule in the config, and a protocol failure that aborts the round, not the run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from privfed.adapters import AdapterLayout
from privfed.client.node import ClientNode
from privfed.client.trainer import LocalResult
from privfed.config import SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.secagg import SecAggServer
from privfed.server import FedAvg, FederatedServer
from privfed.transport.simulation import SimulationTransport
from tests.conftest import tiny_config


def test_explicit_threshold_at_or_below_half_the_neighbourhood_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"secagg.threshold must exceed half of secagg.degree \+ 1 \(5\).*got 2"):
        tiny_config(**{"secagg.enabled": True, "server.weighting": "uniform", "server.clients_per_round": 5,
                       "secagg.threshold": 2})  # fmt: skip
    config = tiny_config(
        **{"secagg.enabled": True, "server.weighting": "uniform", "server.clients_per_round": 5, "secagg.threshold": 3}
    )
    assert config.secagg.resolved_threshold(5) == 3


@pytest.mark.parametrize("cohort", range(3, 60))
def test_default_threshold_is_the_smallest_strict_majority(cohort: int) -> None:
    secagg = SecAggConfig(enabled=True)
    holders = secagg.resolved_degree(cohort) + 1
    threshold = secagg.resolved_threshold(cohort)
    assert 2 * threshold > holders and 2 * (threshold - 1) <= holders


def test_clamped_threshold_follows_poisson_cohorts() -> None:
    secagg = SecAggConfig(enabled=True, threshold=3)  # fine for 5 clients (degree 4)
    assert secagg.resolved_threshold(5) == 3
    for cohort in (3, 4, 17, 40):  # other round sizes: moved into (holders / 2, holders]
        holders = secagg.resolved_degree(cohort) + 1
        threshold = secagg.resolved_threshold(cohort, clamp=True)
        assert holders < 2 * threshold and threshold <= holders


class _StubTrainer:
    def train(self, *, global_vector: np.ndarray, data: Any, seed: int) -> LocalResult:
        del data
        delta = np.random.default_rng(seed).normal(0, 0.01, global_vector.size).astype(np.float32)
        return LocalResult(delta=delta, num_examples=4, train_loss=0.5, steps=1)


def test_a_protocol_error_in_finish_stage_aborts_the_round_instead_of_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = SecAggServer.finish_stage

    def failing(self: SecAggServer) -> dict[int, bytes]:
        if self.stage == "unmask":
            raise ProtocolError("malformed Shamir share")  # what a high-byte flip used to raise here
        return original(self)

    monkeypatch.setattr(SecAggServer, "finish_stage", failing)
    nodes = [ClientNode(client_id=i, trainer=_StubTrainer(), data=None, seed=0) for i in range(5)]  # type: ignore[arg-type]
    server = FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (4,))]),
        global_vector=np.zeros(4, np.float32),
        strategy=FedAvg(),
        num_clients=5,
        clients_per_round=5,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True),
    )
    result = server.run_round(1, SimulationTransport(nodes=nodes))
    assert result.aborted == "malformed Shamir share" and result.num_clients == 0
    assert result.update_norm == 0.0
    np.testing.assert_array_equal(server.global_vector, np.zeros(4, np.float32))
