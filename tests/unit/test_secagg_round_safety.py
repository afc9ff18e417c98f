"""The threshold rule in the config, and a protocol failure that aborts the round, not the run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from privfed.client.trainer import LocalResult
from privfed.compression import FixedPointCodec
from privfed.config import SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.secagg import DropoutPlan, SecAggServer, neighbour_graph
from privfed.transport.messages import GlobalModel
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


class _FailingServer(SecAggServer):
    def finish_stage(self) -> dict[int, bytes]:
        if self.stage == "unmask":
            raise ProtocolError("malformed Shamir share")  # what a high-byte flip used to raise here
        return super().finish_stage()


def test_a_protocol_error_in_finish_stage_aborts_the_round_instead_of_the_run() -> None:
    graph = neighbour_graph(range(5), degree=4, rng=np.random.default_rng(0))
    server = _FailingServer(round=1, neighbours=graph, threshold=3, bits=32, dim=5, session=bytes(16))
    transport = SimulationTransport(trainer=_StubTrainer(), client_data=[None] * 5, seed=0)  # type: ignore[arg-type,list-item]
    exchange = transport.secure_exchange(
        broadcast=GlobalModel(round=1, vector=np.zeros(4, np.float32)).to_bytes(),
        server=server,
        codec=FixedPointCodec(bits=32, clip=1.0, num_summands=5),
        dropouts=DropoutPlan(),
    )
    assert exchange.result is None and exchange.contributors == ()
    assert exchange.abort_reason == "malformed Shamir share"
