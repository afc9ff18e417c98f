"""Distributed DP upload stages: measured sensitivity, dropouts, noise room (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.adapters.layout import AdapterLayout
from privfed.client.stages import DistributedNoiseStage, StageContext, Upload, UploadPipeline
from privfed.config import CompressionConfig, SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.privacy.dpfedavg import AdaptiveClipping, DPFedAvgServer
from privfed.server.server import FederatedServer
from privfed.server.strategies import FedAvg

DIM = 200


def _server(
    *,
    mechanism: str = "distributed_gaussian",
    bits: int = 16,
    num_clients: int = 10,
    per_round: int = 5,
    compression: CompressionConfig | None = None,
    adaptive: AdaptiveClipping | None = None,
    dropout_rate: float = 0.0,
) -> FederatedServer:
    return FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (DIM,))]),
        global_vector=np.zeros(DIM, dtype=np.float32),
        strategy=FedAvg(),
        num_clients=num_clients,
        clients_per_round=per_round,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True, bits=bits, clip=0.1, dropout_rate=dropout_rate),
        user_dp=DPFedAvgServer(noise_multiplier=1.0, clip_norm=0.5, expected_clients=per_round, adaptive=adaptive),
        user_mechanism=mechanism,
        compression=compression,
    )


def _signed(residues: np.ndarray, bits: int) -> np.ndarray:
    r = residues.astype(np.int64) & ((1 << bits) - 1)
    return np.where(r >= 1 << (bits - 1), r - (1 << bits), r)


COMPRESSIONS = [
    CompressionConfig(),
    CompressionConfig(rotation=True),
    CompressionConfig(rotation=True, sparsity=0.5),
    CompressionConfig(rotation=True, conditional_rounding=True),
]


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=["plain", "rotate", "rotate+sparsify", "conditional"])
@settings(max_examples=15, deadline=None)
@given(
    scale=st.floats(1e-3, 1e3),
    spike=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_one_client_moves_the_noiseless_integer_sum_by_at_most_the_accounted_sensitivity(
    compression: CompressionConfig, scale: float, spike: bool, seed: int
) -> None:
    """Add one client to a round: the noiseless integer sum (what the noise protects) moves by its
    code vector, whose L2 norm must stay within the l2_sensitivity the accountant is charged for."""
    server = _server(compression=compression)
    plan = server.distributed
    assert plan is not None
    pipeline = server.upload_pipeline()
    assert [s.name for s in pipeline.stages][-2:] == ["fixed_point", "distributed_noise"]
    assert "append_metrics" not in [s.name for s in pipeline.stages]  # no noiseless metric travels
    noiseless = UploadPipeline(pipeline.stages[:-1])
    rng = np.random.default_rng(seed)

    def codes(client: int) -> np.ndarray:
        x = rng.normal(size=DIM) * scale
        if spike:
            x = np.zeros(DIM)
            x[client % DIM] = scale * 50
        ctx = StageContext(round=3, client_id=client, rng=np.random.default_rng([seed, client]))
        return _signed(noiseless.encode(Upload(values=x, metrics={"train_loss": 1.0}), ctx).values, 16)

    base = np.sum([codes(c) for c in range(4)], axis=0)
    moved = base + codes(4)
    norm = float(np.linalg.norm((moved - base).astype(np.float64)))
    assert norm <= plan.l2_sensitivity * (1 + 1e-12)
    if scale >= 1 and not spike:  # a delta far above the clip norm comes close to the bound: it is not vacuous
        assert norm >= 0.5 * plan.l2_sensitivity


@pytest.mark.parametrize("mechanism", ["distributed_gaussian", "skellam"])
@settings(max_examples=20, deadline=None)
@given(survivors=st.sets(st.integers(0, 7), min_size=2, max_size=8), seed=st.integers(0, 2**31))
def test_modular_sum_of_survivors_is_their_code_sum_plus_their_noise(
    mechanism: str, survivors: set[int], seed: int
) -> None:
    server = _server(mechanism=mechanism, compression=CompressionConfig(rotation=True))
    plan = server.distributed
    assert plan is not None and plan.min_contributors <= 2
    pipeline = server.upload_pipeline()
    noise_stage = pipeline.stages[-1]
    assert isinstance(noise_stage, DistributedNoiseStage)
    noiseless = UploadPipeline(pipeline.stages[:-1])
    data = np.random.default_rng(seed).normal(scale=0.05, size=(8, DIM))
    uploads, exact = {}, {}
    for c in range(8):
        ctx = StageContext(round=1, client_id=c, rng=np.random.default_rng([seed, c]))
        uploads[c] = pipeline.encode(Upload(values=data[c]), ctx).values
        # Replay the client's generator: the same codes, then the same noise draw.
        replay = np.random.default_rng([seed, c])
        code = _signed(
            noiseless.encode(Upload(values=data[c]), StageContext(round=1, client_id=c, rng=replay)).values, 16
        )
        exact[c] = code + noise_stage.noise(replay)
    members = sorted(survivors)
    total = np.sum([uploads[c].astype(np.int64) for c in members], axis=0) % (1 << 16)
    assert np.array_equal(_signed(total, 16), np.sum([exact[c] for c in members], axis=0))  # no wraparound
    noised = pipeline.decode_sum(Upload(values=total), StageContext(round=1, contributors=len(members)))
    # What the server decodes is the survivors' data plus noise of the planned scale, never the data alone.
    codec = server.codec
    assert codec is not None
    step = float(np.asarray(codec.scale).reshape(-1)[0])
    clean = np.sum(data[members], axis=0)
    spread = float(np.std(noised.values - clean))
    expected = plan.local_stddev * np.sqrt(len(members)) / step
    assert 0.75 * expected <= spread <= 1.25 * expected


def test_too_few_contributors_for_the_credited_noise_are_refused() -> None:
    server = _server(num_clients=100, per_round=50)
    plan = server.distributed
    assert plan is not None and plan.shares > 10  # Binomial(100, 0.5)'s 1% quantile, less one
    pipeline = server.upload_pipeline()
    zero = np.zeros(pipeline.stages[-1].dim, dtype=np.uint32)  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="too little distributed noise"):
        pipeline.decode_sum(Upload(values=zero), StageContext(round=1, contributors=plan.shares))
    pipeline.decode_sum(Upload(values=zero), StageContext(round=1, contributors=plan.shares + 1))


def test_dropout_rate_over_provisions_the_noise() -> None:
    calm = _server(num_clients=100, per_round=50).distributed
    stormy = _server(num_clients=100, per_round=50, dropout_rate=0.2).distributed
    assert calm is not None and stormy is not None
    assert stormy.shares < calm.shares  # fewer survivors expected: each share is larger
    assert stormy.local_stddev > calm.local_stddev


def test_the_noise_room_admits_the_noise_tail_and_refuses_beyond() -> None:
    server = _server()
    plan, codec = server.distributed, server.codec
    assert plan is not None and codec is not None
    assert codec.num_summands == plan.max_contributors + plan.noise_summands > 10 == plan.max_contributors
    pipeline = server.upload_pipeline()
    k = codec.max_code
    m = 3
    edge = np.zeros(DIM, dtype=np.int64)
    edge[0] = (m + plan.noise_summands) * k
    ctx = StageContext(round=1, contributors=m)
    pipeline.decode_sum(Upload(values=edge % (1 << 16)), ctx)
    edge[0] += 1
    with pytest.raises(ProtocolError, match="beyond"):
        pipeline.decode_sum(Upload(values=edge % (1 << 16)), ctx)


def test_distributed_mechanisms_refuse_what_they_cannot_do_yet() -> None:
    with pytest.raises(ConfigError, match="adaptive_clipping is not implemented yet"):
        _server(adaptive=AdaptiveClipping())
    with pytest.raises(ConfigError, match="cannot hold the sum"):
        _server(bits=6)


def test_secure_noise_shares_come_from_the_os_not_the_seed() -> None:
    server = _server()
    server.secure_noise = True
    pipeline = server.upload_pipeline()
    stage = pipeline.stages[-1]
    assert isinstance(stage, DistributedNoiseStage) and stage.params()["secure"] is True
    rebuilt = UploadPipeline.from_json(pipeline.to_json())  # what a client receives
    x = np.full(DIM, 0.01)
    one, two = (
        rebuilt.encode(Upload(values=x), StageContext(round=1, client_id=0, rng=np.random.default_rng(7))).values
        for _ in range(2)
    )
    assert not np.array_equal(one, two)  # same seed, different shares
    server.secure_noise = False
    seeded = UploadPipeline.from_json(server.upload_pipeline().to_json())
    a, b = (
        seeded.encode(Upload(values=x), StageContext(round=1, client_id=0, rng=np.random.default_rng(7))).values
        for _ in range(2)
    )
    assert np.array_equal(a, b)
