"""Compression stages (issue 16): rotation, sparsification, top-k, packing, wire messages, config refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

from privfed.adapters import AdapterLayout
from privfed.client.stages import (
    FixedPointStage,
    RotateStage,
    SparsifyStage,
    StageContext,
    TopKStage,
    Upload,
    UploadPipeline,
)
from privfed.compression import (
    FixedPointCodec,
    fwht,
    max_norm_before_rounding,
    pack_bits,
    packed_size,
    rounded_l2_norm_bound,
    unpack_bits,
)
from privfed.config import SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.server import FedAvg, FederatedServer
from privfed.transport.messages import CompressedRoundRequest, EncodedUpdate
from tests.conftest import tiny_config


def test_fwht_equals_the_normalised_hadamard_matrix() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 8, 64):
        x = rng.normal(size=n)
        expected = scipy.linalg.hadamard(n) @ x / np.sqrt(n)
        np.testing.assert_allclose(fwht(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(np.ones(6))


def test_rotation_signs_are_shared_per_round_and_differ_across_rounds() -> None:
    stage = RotateStage(dim=5, seed=11)
    x = Upload(values=np.arange(1, 6, dtype=np.float64))
    a = stage.encode(x, StageContext(round=1, client_id=0)).values
    b = stage.encode(x, StageContext(round=1, client_id=7)).values
    c = stage.encode(x, StageContext(round=2, client_id=0)).values
    assert a.shape == (8,)
    np.testing.assert_array_equal(a, b)  # the client does not enter the rotation: sums line up
    assert not np.allclose(a, c)
    back = stage.decode_sum(Upload(values=a), StageContext(round=1)).values
    np.testing.assert_allclose(back, x.values, atol=1e-12)


def test_sparsify_keeps_one_subset_for_every_client_and_rescales_on_decode() -> None:
    stage = SparsifyStage.with_sparsity(dim=10, sparsity=0.6, seed=5)
    assert stage.kept == 4
    x = np.arange(1.0, 11.0)
    a = stage.encode(Upload(values=x), StageContext(round=3, client_id=1)).values
    b = stage.encode(Upload(values=2 * x), StageContext(round=3, client_id=2)).values
    np.testing.assert_array_equal(2 * a, b)
    subset = stage.subset(3)
    out = stage.decode_sum(Upload(values=a + b), StageContext(round=3)).values
    np.testing.assert_allclose(out[subset], 3 * x[subset] * 10 / 4)
    assert np.count_nonzero(out) == 4


def test_topk_keeps_the_largest_and_decodes_from_its_support() -> None:
    stage = TopKStage(dim=6, kept=2)
    x = np.array([0.1, -5.0, 0.2, 3.0, 0.0, -0.3])
    up = stage.encode(Upload(values=x), StageContext(round=1, client_id=0))
    assert up.support is not None and up.support.tolist() == [1, 3]
    np.testing.assert_array_equal(stage.decode_sum(up, StageContext(round=1)).values, [0, -5.0, 0, 3.0, 0, 0])
    with pytest.raises(ProtocolError, match="distinct indices below 6"):
        stage.decode_sum(Upload(values=up.values, support=np.array([1, 9])), StageContext(round=1))


@pytest.mark.parametrize("bits", [1, 2, 3, 7, 8, 13, 16, 31, 32])
def test_bit_packing_round_trips_and_takes_bits_per_value(bits: int) -> None:
    rng = np.random.default_rng(bits)
    n = 70_001  # more than one chunk, not a multiple of 8
    codes = rng.integers(0, 2**bits, size=n, dtype=np.uint64)
    data = pack_bits(codes, bits=bits)
    assert len(data) == packed_size(n, bits=bits) == (n * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(data, count=n, bits=bits), codes)
    with pytest.raises(ValueError, match="does not fit"):
        pack_bits([2**bits], bits=bits)


def test_encoded_update_message_round_trips_and_rejects_bad_lengths() -> None:
    codes = np.array([0, 1, 3, 2, 1], dtype=np.uint32)
    msg = EncodedUpdate(
        round=2,
        client_id=4,
        num_examples=9,
        train_loss=0.5,
        bits=2,
        values=codes,
        support=np.arange(5, dtype=np.uint32),
    )
    raw = msg.to_bytes()
    back = EncodedUpdate.from_bytes(raw)
    np.testing.assert_array_equal(back.values, codes)
    np.testing.assert_array_equal(back.support, np.arange(5))
    assert (back.round, back.client_id, back.num_examples, back.bits) == (2, 4, 9, 2)
    with pytest.raises(ProtocolError, match="does not add up"):
        EncodedUpdate.from_bytes(raw + b"\0")
    floats = EncodedUpdate(round=1, client_id=0, num_examples=1, train_loss=1.0, bits=0, values=np.ones(3, np.float32))
    np.testing.assert_array_equal(EncodedUpdate.from_bytes(floats.to_bytes()).values, np.ones(3))
    req = CompressedRoundRequest(round=1, vector=np.zeros(4, np.float32), stages="[]")
    assert CompressedRoundRequest.from_bytes(req.to_bytes()).stages == "[]"


def test_codec_refuses_a_modulus_that_cannot_hold_the_summands_and_never_wraps_at_two_bits() -> None:
    with pytest.raises(ValueError, match="cannot hold a sum of 2 codes"):
        FixedPointCodec(bits=2, clip=1.0, num_summands=2)
    codec = FixedPointCodec(bits=2, clip=1.0, num_summands=1)  # codes in {-1, 0, 1}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=20_000)
    decoded = codec.decode_sum(codec.encode(x, rng=rng), contributors=1)
    assert set(np.unique(decoded).tolist()) <= {-1.0, 0.0, 1.0}
    assert abs(float(np.mean(decoded - x))) < 5 * np.sqrt(1.0 / x.size)  # unbiased (variance <= 1/4 each)


def test_a_wrapped_or_forged_sum_is_refused_naming_the_coordinate_count() -> None:
    codec = FixedPointCodec(bits=8, clip=1.0, num_summands=10)  # k = 12
    rng = np.random.default_rng(1)
    total = (
        np.sum([codec.encode(rng.uniform(-1, 1, size=50), rng=rng).astype(np.int64) for _ in range(3)], axis=0) % 256
    )
    codec.decode_sum(total, contributors=3)  # honest: fine
    forged = total.copy()
    forged[[4, 9]] = 100  # beyond 3 * 12 = 36 (and not a negative sum either)
    with pytest.raises(ProtocolError, match="2 of 50 coordinates beyond"):
        codec.decode_sum(forged, contributors=3)


def test_conditional_bound_inverts_in_closed_form() -> None:
    for dim, target, beta in [(1, 5.0, 0.6), (1000, 40.0, np.exp(-0.5)), (4096, 200.0, 0.01), (10, 4.0, 0.0)]:
        c = max_norm_before_rounding(target, dim=dim, beta=beta)
        assert c > 0
        assert rounded_l2_norm_bound(c, dim=dim, beta=beta) <= target
        assert rounded_l2_norm_bound(c * 1.001 + 1e-6, dim=dim, beta=beta) > target
    # below sqrt(d) / 2 no norm rounds within the target: nothing may be sent
    assert max_norm_before_rounding(3.0, dim=100, beta=0.5) == 0.0


def _server(**kwargs: object) -> FederatedServer:
    layout = AdapterLayout.from_shapes([("w", (100,))])
    return FederatedServer(
        layout=layout,
        global_vector=np.zeros(100, dtype=np.float32),
        strategy=FedAvg(),
        num_clients=5,
        clients_per_round=5,
        seed=0,
        weighting="uniform",
        **kwargs,  # type: ignore[arg-type]
    )


def test_server_pipeline_rotates_the_delta_only_and_decodes_in_reverse() -> None:
    from privfed.config import CompressionConfig

    server = _server(
        secagg=SecAggConfig(enabled=True, bits=20, clip=1.0),
        compression=CompressionConfig(rotation=True, sparsity=0.5),
    )
    pipeline = server.upload_pipeline()
    assert [s.name for s in pipeline.stages] == ["rotate", "sparsify", "append_metrics", "fixed_point"]
    assert server._upload_dim == 64 + 1  # 100 -> 128 after padding, half kept, plus the loss
    rebuilt = UploadPipeline.from_json(pipeline.to_json())
    x = np.linspace(-0.1, 0.1, 100)
    ctx = StageContext(round=2, client_id=0, rng=np.random.default_rng(0))
    enc = [rebuilt.encode(Upload(values=x * (i + 1), metrics={"train_loss": 1.5}), ctx) for i in range(3)]
    total = np.sum([e.values.astype(np.int64) for e in enc], axis=0) % 2**20
    dec = pipeline.decode_sum(Upload(values=total), StageContext(round=2, contributors=3))
    assert dec.metrics["train_loss"] == pytest.approx(4.5, abs=3 * 5 * 100 / (2**19 - 1) * 1.01)
    assert dec.values.shape == (100,)


def test_server_refuses_topk_under_secagg_and_config_refuses_bad_combinations() -> None:
    from privfed.config import CompressionConfig

    with pytest.raises(ConfigError, match="line up"):
        _server(
            secagg=SecAggConfig(enabled=True, bits=20), compression=CompressionConfig(sparsity=0.5, sparsify="topk")
        )
    secure = {"secagg.enabled": True, "server.weighting": "uniform"}
    cases: list[tuple[dict[str, object], str]] = [
        ({**secure, "compression.sparsity": 0.5, "compression.sparsify": "topk"}, "each client would keep different"),
        ({**secure, "compression.bits": 8}, "under secagg.enabled the code width is secagg.bits"),
        ({"compression.conditional_rounding": True}, "needs secagg.enabled and user-level DP"),
        ({"compression.sparsity": 1.0}, "compression.sparsity must be"),
        ({"compression.sparsity": -0.1}, "compression.sparsity must be"),
        ({"compression.bits": 1}, "compression.bits must be 0 (off) or"),
        ({"compression.bits": 33}, "compression.bits must be 0 (off) or"),
        ({**secure, "secagg.bits": 1}, "secagg.bits must be"),
        ({**secure, "secagg.bits": 2}, "secagg.bits must be at least 3 to sum 3 clients"),
    ]
    for overrides, fragment in cases:
        with pytest.raises(ConfigError) as info:
            tiny_config(**overrides)
        assert fragment in str(info.value), (overrides, str(info.value))


def test_plain_fixed_point_stage_with_one_summand_decodes_one_upload() -> None:
    stage = FixedPointStage(bits=4, clip=0.5, extra_clip=1.0, dim=8, extra=0, num_summands=1)
    x = np.linspace(-0.5, 0.5, 8)
    up = stage.encode(Upload(values=x), StageContext(round=1, client_id=0, rng=np.random.default_rng(0)))
    out = stage.decode_sum(up, StageContext(round=1, contributors=1)).values
    assert np.all(np.abs(out - x) < 0.5 / 7 * (1 + 1e-9))


def test_conditional_rounding_lets_clients_keep_more_of_the_clip_norm() -> None:
    from privfed.config import CompressionConfig
    from privfed.privacy import AdaptiveClipping, DPFedAvgServer

    def upload_clip(conditional: bool) -> float:
        server = _server(
            secagg=SecAggConfig(enabled=True, bits=12, clip=1.0, loss_clip=10.0),
            user_dp=DPFedAvgServer(
                noise_multiplier=1.0, clip_norm=1.0, expected_clients=5, adaptive=AdaptiveClipping(count_stddev=1.0)
            ),
            compression=CompressionConfig(rotation=True, conditional_rounding=conditional),
        )
        clip = server.upload_clip_norm()
        assert clip is not None
        return clip

    # 12 bits, 5 summands: step 1/409, 128 rounded coordinates: worst case sqrt(128)/409 ~ 0.028,
    # conditional ~ sqrt(128/4 + ...)/409, about half of it.
    worst, conditional = upload_clip(False), upload_clip(True)
    assert worst == pytest.approx(1 - math.sqrt(128) * (1 + 1e-9) / 409, rel=1e-9)
    assert 1 > conditional > worst + 0.01
