"""What user-level DP releases: clipped norms never past C, the unclipped fraction in [0, 1], no exact loss."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privfed.adapters import AdapterLayout
from privfed.compression import FixedPointCodec
from privfed.privacy import AdaptiveClipping, DPFedAvgServer, SeededNoise, clip_to_norm
from privfed.server import FedAvg, FederatedServer
from privfed.transport import ClientUpdate
from tests.fakes import ScriptedTransport


@settings(max_examples=300, deadline=None)
@given(
    delta=hnp.arrays(np.float64, st.integers(1, 300), elements=st.floats(-1e3, 1e3)),
    max_norm=st.floats(1e-3, 10.0),
)
def test_float32_clipped_norm_never_exceeds_the_bound(delta: np.ndarray, max_norm: float) -> None:
    """Rounding the scaled vector to float32 used to overshoot C by up to ~2^-24 relative (18 in 2000 draws)."""
    clipped, _ = clip_to_norm(delta, max_norm=max_norm)
    assert float(np.linalg.norm(clipped.astype(np.float64))) <= max_norm


def test_float32_overshoot_case_is_fixed() -> None:
    rng = np.random.default_rng(0)
    over = 0
    for _ in range(2000):
        x = rng.normal(size=200) * 10
        clipped, _ = clip_to_norm(x, max_norm=1.0)
        over += float(np.linalg.norm(clipped.astype(np.float64))) > 1.0
    assert over == 0


def test_unclipped_fraction_is_clamped_to_the_unit_interval() -> None:
    """A large noise draw on a small cohort must not report a fraction outside [0, 1] (tensorflow_privacy clamps)."""
    server = DPFedAvgServer(
        noise_multiplier=0.5, clip_norm=1.0, expected_clients=2, adaptive=AdaptiveClipping(count_stddev=50.0)
    )
    fractions = []
    for seed in range(50):
        result = server.aggregate(np.ones((2, 3), np.float32) * 0.1, noise=SeededNoise(seed))
        fractions.append(result.unclipped_fraction)
    assert all(f is not None and 0.0 <= f <= 1.0 for f in fractions)
    assert {0.0, 1.0} <= set(fractions)  # the noise (std 50 on a count of 2) does hit both ends


def test_training_loss_is_not_released_under_user_level_dp() -> None:
    """The mean loss is an exact function of the clients' data that the ledger does not cover."""
    server = FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (4,))]),
        global_vector=np.zeros(4, np.float32),
        strategy=FedAvg(),
        num_clients=6,
        clients_per_round=3,
        seed=0,
        weighting="uniform",
        user_dp=DPFedAvgServer(noise_multiplier=1.0, clip_norm=1.0, expected_clients=3, adaptive=None),
    )
    replies = ScriptedTransport(
        lambda cohort: [
            ClientUpdate(round=1, client_id=c, num_examples=4, train_loss=0.3, delta=np.ones(4, np.float32)).to_bytes()
            for c in cohort
        ]
    )
    result = server.run_round(1, replies)
    assert result.num_clients > 0 and np.isnan(result.train_loss)


@pytest.mark.parametrize("bits", [53, 62])
def test_codec_refuses_more_bits_than_float64_rounds_exactly(bits: int) -> None:
    with pytest.raises(ValueError, match="between 2 and 52"):
        FixedPointCodec(bits=bits, clip=1.0, num_summands=3)


def test_codes_at_the_clip_edge_stay_within_k_at_52_bits() -> None:
    codec = FixedPointCodec(bits=52, clip=1.0, num_summands=3)
    codes = codec._rounded(np.full(10_000, 1.0), np.random.default_rng(0))
    assert codes.max() <= codec.max_code and codes.min() >= -codec.max_code
