"""User-level DP under SecAgg: stochastic rounding must not break the sensitivity the ledger assumes.

A client clips its delta to C and the codec rounds each coordinate by up to
one quantization step, so the *decoded* delta could exceed C by sqrt(d)/scale.
The server has clients clip to C - slack instead; these tests check the
decoded norm stays <= C at 8-32 bits, and the centred unclipped bit within 1/2.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.adapters import AdapterLayout
from privfed.compression import FixedPointCodec
from privfed.config import SecAggConfig
from privfed.errors import ConfigError
from privfed.privacy import AdaptiveClipping, DPFedAvgServer, clip_to_norm
from privfed.server import FedAvg, FederatedServer


def dp_secagg_server(*, dim: int, bits: int, clip_norm: float, coord_clip: float, num_clients: int) -> FederatedServer:
    layout = AdapterLayout.from_shapes([("w", (dim,))])
    user_dp = DPFedAvgServer(
        noise_multiplier=1.0,
        clip_norm=clip_norm,
        expected_clients=3,
        adaptive=AdaptiveClipping(count_stddev=5.0),
    )
    return FederatedServer(
        layout=layout,
        global_vector=np.zeros(dim, dtype=np.float32),
        strategy=FedAvg(),
        num_clients=num_clients,
        clients_per_round=3,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True, bits=bits, clip=coord_clip, loss_clip=10.0),
        user_dp=user_dp,
    )


def client_upload(server: FederatedServer, delta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What one client's upload decodes to: clip to the server's upload bound, append loss and bit, round."""
    bound = server.upload_clip_norm()
    assert bound is not None and server.codec is not None
    clipped, norm = clip_to_norm(delta, max_norm=bound)
    bit = server._count_bit if norm <= bound else -server._count_bit
    upload = np.concatenate([clipped.astype(np.float64), [1.0, bit]])
    return server.codec.decode_sum(server.codec.encode(upload, rng=rng))


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(1, 400),
    bits=st.integers(8, 32),
    num_clients=st.integers(3, 2000),
    clip_norm=st.floats(0.01, 10.0),
    coord_clip=st.floats(0.01, 10.0),
    scale=st.floats(0.0, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoded_update_stays_within_the_clip_norm(
    dim: int, bits: int, num_clients: int, clip_norm: float, coord_clip: float, scale: float, seed: int
) -> None:
    try:
        server = dp_secagg_server(
            dim=dim, bits=bits, clip_norm=clip_norm, coord_clip=coord_clip, num_clients=num_clients
        )
    except ConfigError as exc:  # too few bits for this cohort and C: refused, never silently loose
        assert "secagg.bits" in str(exc)
        return
    rng = np.random.default_rng(seed)
    d = dim
    for _ in range(5):
        delta = (rng.normal(size=d) * scale).astype(np.float32)
        decoded = client_upload(server, delta, rng)
        assert np.linalg.norm(decoded[:d]) <= clip_norm
        assert abs(decoded[d + 1]) <= 0.5


def test_clipping_to_c_alone_lets_rounding_exceed_c() -> None:
    """Why the slack is needed: at 16 bits with many summands, rounding a norm-C vector exceeds C."""
    d, c = 256, 1.0
    codec = FixedPointCodec(bits=16, clip=np.full(d, 1.0), num_summands=100)
    rng = np.random.default_rng(0)
    x = np.full(d, c / np.sqrt(d))
    norms = [np.linalg.norm(codec.decode_sum(codec.encode(x, rng=rng))) for _ in range(20)]
    assert max(norms) > c
    slack = float(np.linalg.norm(np.broadcast_to(codec.rounding_error_bound(), (d,))))
    y = x * (c - slack) / c
    assert max(np.linalg.norm(codec.decode_sum(codec.encode(y, rng=rng))) for _ in range(200)) <= c


def test_server_plans_the_slack_and_refuses_a_hopeless_codec() -> None:
    server = dp_secagg_server(dim=1000, bits=32, clip_norm=1.0, coord_clip=1.0, num_clients=100)
    bound = server.upload_clip_norm()
    assert bound is not None and 1.0 - 1e-3 < bound < 1.0
    assert 0.5 - 1e-3 < server._count_bit < 0.5
    with pytest.raises(ConfigError, match=r"secagg\.bits = 12"):
        dp_secagg_server(dim=1000, bits=12, clip_norm=1.0, coord_clip=1.0, num_clients=100)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_codec_rounding_error_bound_holds(bits: int) -> None:
    codec = FixedPointCodec(bits=bits, clip=2.0, num_summands=3)
    rng = np.random.default_rng(bits)
    x = rng.uniform(-2, 2, size=5000)
    err = np.abs(codec.decode_sum(codec.encode(x, rng=rng)) - x)
    assert err.max() < float(codec.rounding_error_bound())


def test_codec_refuses_a_range_that_leaves_no_resolution() -> None:
    """secagg.clip = 1e308 used to give scale 0 and a NaN model."""
    with pytest.raises(ValueError, match="no fixed-point resolution"):
        FixedPointCodec(bits=32, clip=1e308, num_summands=10)
