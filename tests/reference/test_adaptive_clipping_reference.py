"""Adaptive clipping (Andrew et al. 2021) charges the ε it spends.

The sensitivity of each of the two released sums (clipped deltas, unclipped
count) is *measured* by adding one client and seeing how far the noiseless
sums move; the two Gaussians are then composed by Google's independent
dp-accounting package and compared with what privfed's ledger charges.
"""

from __future__ import annotations

import dp_accounting
import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.privacy import AdaptiveClipping, DPFedAvgServer, PrivacyLedger, SampledGaussianEvent


class ZeroNoise:
    """No noise: the server's output is then its noiseless query."""

    def normal(self, *, std: float, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        return np.zeros(shape)


def noiseless_queries(server: DPFedAvgServer, deltas: np.ndarray) -> tuple[np.ndarray, float]:
    """(sum of clipped deltas, centred unclipped count) the server releases before noise, read off its output."""
    clip = server.clip_norm
    result = server.aggregate(deltas, noise=ZeroNoise())
    server.clip_norm = clip  # keep C fixed across the comparison
    assert result.unclipped_fraction is not None
    m = server.expected_clients
    return result.mean_delta.astype(np.float64) * m, (result.unclipped_fraction - 0.5) * m


def make_server(*, z: float, count_stddev: float, expected: float = 20.0, clip: float = 1.0) -> DPFedAvgServer:
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=count_stddev)
    return DPFedAvgServer(noise_multiplier=z, clip_norm=clip, expected_clients=expected, adaptive=adaptive)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
    extra_norm=st.floats(0.0, 5.0),
)
def test_one_client_moves_the_count_by_at_most_one_half(n: int, seed: int, extra_norm: float) -> None:
    rng = np.random.default_rng(seed)
    server = make_server(z=1.0, count_stddev=1.0)
    deltas = (rng.normal(size=(n, 6)) * rng.uniform(0.1, 3.0, size=(n, 1))).astype(np.float32)
    direction = rng.normal(size=6)
    extra = (direction / np.linalg.norm(direction) * extra_norm).astype(np.float32)
    sum_a, count_a = noiseless_queries(server, deltas)
    sum_b, count_b = noiseless_queries(server, np.vstack([deltas, extra[None]]))
    assert abs(count_b - count_a) == pytest.approx(0.5, abs=1e-6)
    assert np.linalg.norm(sum_b - sum_a) <= server.clip_norm * (1 + 1e-5)


def measured_multiplier(server: DPFedAvgServer) -> float:
    """Noise multiplier of the pair of Gaussian queries, from measured sensitivities and the stds used."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 4)).astype(np.float32)
    moves_sum, moves_count = [], []
    for extra in (np.array([[0.01, 0, 0, 0]]), np.array([[100.0, 0, 0, 0]])):  # an unclipped and a clipped client
        s_a, c_a = noiseless_queries(server, base)
        s_b, c_b = noiseless_queries(server, np.vstack([base, extra.astype(np.float32)]))
        moves_sum.append(float(np.linalg.norm(s_b - s_a)))
        moves_count.append(abs(c_b - c_a))
    assert server.adaptive is not None
    delta_std = server.delta_multiplier * server.clip_norm
    count_std = server.adaptive.count_stddev
    # Two independent Gaussian queries = one Gaussian on the concatenation:
    # sensitivity^2 / std^2 add up (the RDP of each is alpha * s^2 / (2 std^2)).
    inverse_square = (max(moves_sum) / delta_std) ** 2 + (max(moves_count) / count_std) ** 2
    return float(inverse_square**-0.5)


def google_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
        )
    )
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(
    ("z", "expected", "q", "steps"),
    [(1.0, 20, 0.01, 100), (0.494, 50, 0.025, 10), (2.0, 100, 0.05, 300)],
)
def test_ledger_charges_what_the_two_measured_gaussians_spend(z: float, expected: int, q: float, steps: int) -> None:
    """The issue's cases: z = 1, E = 20 charged 1.21 where the 0/1 bit spent 2.55; now they agree."""
    server = make_server(z=z, count_stddev=expected / 20, expected=expected)
    spent_multiplier = measured_multiplier(server)
    assert spent_multiplier == pytest.approx(z, rel=1e-4)
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    ledger.record([SampledGaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps, scope="user")])
    spent = google_epsilon(spent_multiplier, q, steps, 1e-5)
    assert ledger.epsilon_user() == pytest.approx(spent, rel=0.02)


@pytest.mark.parametrize(("z", "count_stddev"), [(1.0, 1.0), (0.5, 2.5), (3.0, 10.0)])
def test_split_composes_back_to_z_in_dp_accounting(z: float, count_stddev: float) -> None:
    """Unsampled: dp-accounting composes Gaussian(z_delta) with Gaussian(2 sigma_b) into Gaussian(z)."""
    server = make_server(z=z, count_stddev=count_stddev)
    pair = rdp_privacy_accountant.RdpAccountant()
    pair.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(server.delta_multiplier), dp_accounting.GaussianDpEvent(2 * count_stddev)]
        )
    )
    single = rdp_privacy_accountant.RdpAccountant()
    single.compose(dp_accounting.GaussianDpEvent(z))
    assert pair.get_epsilon(1e-5) == pytest.approx(single.get_epsilon(1e-5), rel=1e-9)
