"""The round pipeline: client nodes, upload stages, the transport registry, aggregation by composition."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.adapters import AdapterLayout
from privfed.client.node import ClientNode
from privfed.client.stages import (
    AppendMetricsStage,
    ClipStage,
    FixedPointStage,
    StageContext,
    Upload,
    UploadPipeline,
    upload_stage_names,
)
from privfed.client.trainer import LocalResult
from privfed.config import SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.privacy import clip_to_norm
from privfed.server import FedAvg, FederatedServer
from privfed.transport import ClientUpdate, Decline, GlobalModel, SecureRoundRequest, make_transport, transport_names
from privfed.transport.messages import message_kind
from privfed.transport.simulation import SimulationTransport
from tests.conftest import tiny_config


class StubTrainer:
    """Local training replaced by a seeded random delta (or NaN for the clients in ``diverge``)."""

    def __init__(self, diverge: frozenset[int] = frozenset()) -> None:
        self.diverge = diverge

    def train(self, *, global_vector: np.ndarray, data: Any, seed: int) -> LocalResult:
        delta = np.random.default_rng(seed).normal(0, 0.01, global_vector.size).astype(np.float32)
        if data in self.diverge:
            delta[0] = np.nan
        return LocalResult(delta=delta, num_examples=4, train_loss=0.5, steps=1)


def nodes(n: int, trainer: StubTrainer | None = None) -> list[ClientNode]:
    trainer = trainer or StubTrainer()
    return [ClientNode(client_id=i, trainer=trainer, data=i, seed=0) for i in range(n)]  # type: ignore[arg-type]


class CountingFedAvg(FedAvg):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def aggregate_sum(self, total: npt.NDArray[np.floating], *, weight: float) -> npt.NDArray[np.float32]:
        self.calls.append(f"aggregate_sum/{weight:g}")
        return super().aggregate_sum(total, weight=weight)


def secure_server(strategy: FedAvg, n: int = 5, dim: int = 6) -> FederatedServer:
    return FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (dim,))]),
        global_vector=np.zeros(dim, np.float32),
        strategy=strategy,
        num_clients=n,
        clients_per_round=n,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True),
    )


def test_secure_round_calls_the_strategy_on_the_secure_sum_and_gets_the_mean() -> None:
    strategy = CountingFedAvg()
    server = secure_server(strategy)
    result = server.run_round(1, SimulationTransport(nodes=nodes(5)))
    assert strategy.calls == ["aggregate_sum/5"] and result.num_clients == 5 and result.aborted is None
    deltas = [
        StubTrainer().train(global_vector=np.zeros(6, np.float32), data=c, seed=_local_seed(c, 1)).delta
        for c in range(5)
    ]
    np.testing.assert_allclose(server.global_vector, np.mean(deltas, axis=0), atol=1e-6)
    assert result.train_loss == pytest.approx(0.5)


def _local_seed(client: int, round: int) -> int:
    from privfed.rng import derive_seed

    return derive_seed(0, "local", round, client)


def test_a_diverged_client_declines_and_is_counted_as_rejected() -> None:
    server = secure_server(FedAvg())
    result = server.run_round(1, SimulationTransport(nodes=nodes(5, StubTrainer(diverge=frozenset({2})))))
    assert result.rejected_updates == 1 and result.num_clients == 4 and result.dropped_clients == 0
    assert np.isfinite(server.global_vector).all()


def test_node_answers_a_plain_round_and_refuses_what_it_cannot_handle() -> None:
    node = nodes(3)[1]
    reply = node.handle(GlobalModel(round=2, vector=np.zeros(6, np.float32)).to_bytes())
    assert reply is not None
    update = ClientUpdate.from_bytes(reply)
    assert update.client_id == 1 and update.round == 2 and update.delta.shape == (6,)
    with pytest.raises(ProtocolError, match="no secure-aggregation round"):
        node.handle(b"\x01not a privfed message")
    with pytest.raises(ProtocolError, match="does not handle message kind"):
        node.handle(reply)  # a ClientUpdate sent to a client
    bad = SecureRoundRequest(
        round=1, vector=np.zeros(6, np.float32), stages='[{"name": "nope", "params": {}}]', setup=b""
    )
    with pytest.raises(ProtocolError, match="unknown upload stage 'nope'"):
        node.handle(bad.to_bytes())


def test_decline_and_request_round_trip_and_reject_damage() -> None:
    raw = Decline(round=3, client_id=7).to_bytes()
    assert Decline.from_bytes(raw) == Decline(round=3, client_id=7) and message_kind(raw) == Decline.KIND
    with pytest.raises(ProtocolError):
        Decline.from_bytes(raw + b"x")
    request = SecureRoundRequest(round=1, vector=np.arange(3, dtype=np.float32), stages="[]", setup=b"abc")
    back = SecureRoundRequest.from_bytes(request.to_bytes())
    assert back.round == 1 and back.stages == "[]" and back.setup == b"abc" and back.vector.tolist() == [0, 1, 2]
    for damaged in (request.to_bytes()[:-1], request.to_bytes() + b"\x00"):
        with pytest.raises(ProtocolError):
            SecureRoundRequest.from_bytes(damaged)


def pipeline(*, d: int, n: int, bits: int, clip_norm: float | None) -> UploadPipeline:
    names = ["train_loss"] + (["unclipped"] if clip_norm is not None else [])
    stages: list[Any] = [] if clip_norm is None else [ClipStage(max_norm=clip_norm, count_bit=0.49)]
    stages += [
        AppendMetricsStage(names=names),
        FixedPointStage(bits=bits, clip=1.0, extra_clip=10.0, dim=d, extra=len(names), num_summands=n),
    ]
    return UploadPipeline(stages)


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(1, 64),
    n=st.integers(1, 12),
    bits=st.integers(24, 52),
    clip_norm=st.one_of(st.none(), st.floats(0.01, 5.0)),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_of_the_sum_of_encodings_is_the_sum(
    d: int, n: int, bits: int, clip_norm: float | None, seed: int
) -> None:
    """decode_sum(sum of encode(x_i)) equals sum(stage-processed x_i) within n quantization steps per coordinate."""
    p = pipeline(d=d, n=n, bits=bits, clip_norm=clip_norm)
    rng = np.random.default_rng(seed)
    xs = rng.normal(0, 0.3, size=(n, d))
    losses = rng.uniform(0, 3, size=n)
    modulus = 1 << bits
    total = np.zeros(d + 1 + (clip_norm is not None), dtype=object)
    expected = np.zeros(d)
    for i in range(n):
        enc = p.encode(Upload(values=xs[i], metrics={"train_loss": float(losses[i])}), StageContext(1, i, rng))
        total = (total + enc.values.astype(object)) % modulus
        clipped = xs[i] if clip_norm is None else clip_to_norm(xs[i], max_norm=clip_norm)[0].astype(np.float64)
        expected += np.clip(clipped, -1.0, 1.0)
    decoded = p.decode_sum(Upload(values=np.array(total, dtype=np.uint64)), StageContext(1))
    step = float(np.max(p.stages[-1].codec.rounding_error_bound()))  # type: ignore[attr-defined]
    np.testing.assert_allclose(decoded.values, expected, atol=n * step + 1e-9)
    assert decoded.metrics["train_loss"] == pytest.approx(losses.sum(), abs=n * step + 1e-9)
    if clip_norm is not None:
        assert abs(decoded.metrics["unclipped"]) <= n * 0.5


def test_pipeline_json_round_trip_and_bad_specs() -> None:
    p = pipeline(d=4, n=3, bits=32, clip_norm=0.5)
    q = UploadPipeline.from_json(p.to_json())
    assert q.specs() == p.specs() and [s.name for s in q.stages] == ["clip", "append_metrics", "fixed_point"]
    assert {"clip", "append_metrics", "fixed_point"} <= set(upload_stage_names())
    for text in ("{", "[1]", '[{"name": "clip"}]', '[{"name": "clip", "params": {"max_norm": "x"}}]',
                 '[{"name": "fixed_point", "params": {"bits": 99}}]', "[" + "[" * 5000 + "]" * 5001):  # fmt: skip
        with pytest.raises(ProtocolError):
            UploadPipeline.from_json(text)


def test_transport_kind_selects_a_registered_transport() -> None:
    assert "simulation" in transport_names()
    config = tiny_config()
    assert isinstance(make_transport("simulation", nodes=nodes(2), config=config), SimulationTransport)
    with pytest.raises(ConfigError, match=r"transport\.kind must be one of .*'simulation'"):
        make_transport("carrier-pigeon", nodes=nodes(2), config=config)
    with pytest.raises(ConfigError, match=r"transport\.kind"):
        tiny_config(**{"transport.kind": "carrier-pigeon"})
