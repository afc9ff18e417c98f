"""Distributed DP accounting against independent recomputations of the papers' closed forms (issue 16).

Every epsilon here is recomputed from the formulas as printed, in mpmath at 50 digits, with
the Poisson-subsampling sum of Zhu & Wang 2019 (Theorem 5) written out term by term and the
RDP -> (epsilon, delta) conversion of Balle et al. 2020 (the one Opacus and privfed's central
``rdp`` accountant use), and compared with :func:`privfed.privacy.accountants.compute_epsilon`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import mpmath
import numpy as np
import pytest

from privfed.adapters.layout import AdapterLayout
from privfed.config import SecAggConfig
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.distributed import ORDERS, _gaussian_rdp, rdp_subsampled
from privfed.privacy.dpfedavg import DPFedAvgServer
from privfed.privacy.events import DistributedNoiseEvent, SampledGaussianEvent
from privfed.server.server import FederatedServer
from privfed.server.strategies import FedAvg

mpmath.mp.dps = 50


def _ddg_rdp(alpha: int, *, d2: float, sigma: float, n: int, d: int) -> mpmath.mpf:
    """Kairouz, Liu, Steinke 2021 (arXiv:2102.06387), Theorem 1 + Proposition 14, as printed."""
    s = mpmath.mpf(sigma)
    tau = 10 * mpmath.fsum(mpmath.exp(-2 * mpmath.pi**2 * s**2 * k / (k + 1)) for k in range(1, n))
    d1 = min(mpmath.mpf(d2) * mpmath.sqrt(d), mpmath.mpf(d2) ** 2)
    eps2 = mpmath.mpf(d2) / (mpmath.sqrt(n) * s)
    eps1 = d1 / (mpmath.sqrt(n) * s)
    a = mpmath.mpf(alpha)
    return min(
        a / 2 * eps2**2 + tau * d,
        a / 2 * (eps2**2 + 2 * eps1 * tau + tau**2 * d),
        a / 2 * (eps2 + mpmath.sqrt(d) * tau) ** 2,
    )


def _skellam_rdp(alpha: int, *, d2: float, mu: float, d: int) -> mpmath.mpf:
    """Agarwal, Kairouz, Liu 2021 (arXiv:2110.04995), Theorem 3.5, with mu the total variance."""
    d2m, mum = mpmath.mpf(d2), mpmath.mpf(mu)
    d1 = min(d2m * mpmath.sqrt(d), d2m**2)
    return alpha * d2m**2 / (2 * mum) + min(((2 * alpha - 1) * d2m**2 + 6 * d1) / (4 * mum**2), 3 * d1 / (2 * mum))


def _zhu_wang(alpha: int, q: float, rdp: dict[int, mpmath.mpf]) -> mpmath.mpf:
    """Zhu & Wang 2019, Theorem 5 (general upper bound for Poisson subsampling), term by term."""
    q = mpmath.mpf(q)
    total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
    total += mpmath.binomial(alpha, 2) * q**2 * (1 - q) ** (alpha - 2) * mpmath.exp(rdp[2])
    for j in range(3, alpha + 1):
        total += 3 * mpmath.binomial(alpha, j) * (1 - q) ** (alpha - j) * q**j * mpmath.exp((j - 1) * rdp[j])
    return min(mpmath.log(total) / (alpha - 1), rdp[alpha])


def _epsilon(rdp_of: dict[int, mpmath.mpf], *, q: float, steps: int, delta: float) -> float:
    best = mpmath.inf
    for a in ORDERS:
        r = steps * (_zhu_wang(a, q, rdp_of) if q < 1 else rdp_of[a])
        eps = r + mpmath.log(mpmath.mpf(a - 1) / a) - (mpmath.log(delta) + mpmath.log(a)) / (a - 1)
        best = min(best, eps)
    return float(best)


CASES = [
    # (z, q, steps, shares, D2, d)
    (0.8, 0.02, 200, 40, 300.0, 1024),
    (1.2, 0.1, 50, 5, 40.0, 4096),
    (0.6, 1.0, 10, 3, 8.0, 64),  # small local noise: tau and the L1 terms matter
]


@pytest.mark.parametrize(("z", "q", "steps", "shares", "d2", "d"), CASES)
def test_distributed_gaussian_epsilon_matches_the_papers_formulas(
    z: float, q: float, steps: int, shares: int, d2: float, d: int
) -> None:
    event = DistributedNoiseEvent(
        mechanism="distributed_gaussian", noise_multiplier=z, sample_rate=q, steps=steps, shares=shares,
        l2_sensitivity=d2, dim=d,
    )  # fmt: skip
    sigma = z * d2 / math.sqrt(shares)
    assert event.local_stddev == pytest.approx(sigma)
    rdp = {a: _ddg_rdp(a, d2=d2, sigma=sigma, n=shares, d=d) for a in range(2, ORDERS[-1] + 1)}
    expected = _epsilon(rdp, q=q, steps=steps, delta=1e-5)
    assert compute_epsilon([event], delta=1e-5) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("z", "q", "steps", "shares", "d2", "d"), CASES)
def test_skellam_epsilon_matches_the_papers_formula(
    z: float, q: float, steps: int, shares: int, d2: float, d: int
) -> None:
    event = DistributedNoiseEvent(
        mechanism="skellam", noise_multiplier=z, sample_rate=q, steps=steps, shares=shares, l2_sensitivity=d2, dim=d
    )
    mu = (z * d2) ** 2  # total variance of the summed shares
    rdp = {a: _skellam_rdp(a, d2=d2, mu=mu, d=d) for a in range(2, ORDERS[-1] + 1)}
    expected = _epsilon(rdp, q=q, steps=steps, delta=1e-5)
    assert compute_epsilon([event], delta=1e-5, accountant="prv") == pytest.approx(expected, rel=1e-9)


def test_zhu_wang_bound_is_above_the_exact_subsampled_gaussian() -> None:
    """Sanity of the subsampling bound: applied to the Gaussian's RDP alpha/(2 z^2) it can only be
    looser than Mironov et al.'s exact subsampled-Gaussian RDP (Opacus) at every integer order."""
    for z, q in [(0.7, 0.01), (1.0, 0.05), (2.0, 0.3)]:
        unsampled = [math.inf, math.inf] + [a / (2 * z * z) for a in range(2, ORDERS[-1] + 1)]
        ours = np.array([rdp_subsampled(a, sample_rate=q, rdp=unsampled) for a in ORDERS])
        exact = _gaussian_rdp(z, q)
        assert np.all(ours >= exact * (1 - 1e-9))
        assert ours[0] <= 3 * exact[0]  # and not vacuous at low orders


def _server(bits: int, mechanism: str = "distributed_gaussian", **secagg: object) -> FederatedServer:
    return FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (200,))]),
        global_vector=np.zeros(200, dtype=np.float32),
        strategy=FedAvg(),
        num_clients=10,
        clients_per_round=5,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True, bits=bits, clip=0.1, **secagg),  # type: ignore[arg-type]
        user_dp=DPFedAvgServer(noise_multiplier=1.0, clip_norm=0.5, expected_clients=5, adaptive=None),
        user_mechanism=mechanism,
    )


@pytest.mark.parametrize("q", [1.0, 0.05])
def test_distributed_gaussian_tends_to_the_gaussian_as_bits_grow(q: float) -> None:
    """KLS21's comparison: the continuous Gaussian with the same noise std (z C in decoded units)
    protecting the signal the clients actually send (clipped to C' so that it still has norm <= C
    after rounding) has noise multiplier z C / C'. The distributed discrete Gaussian pays for
    rounding (C' < C) and for discreteness (tau, the L1 terms); both vanish as bits grow."""
    z, steps, delta = 1.0, 100, 1e-5
    ratios = []
    for bits in (10, 12, 14, 16, 24, 40):
        server = _server(bits)
        assert server.distributed is not None
        ours = compute_epsilon([dataclasses.replace(server.distributed.event(steps=steps), sample_rate=q)], delta=delta)
        z_same_noise = z * 0.5 / server.upload_clip_norm()  # type: ignore[operator]
        gaussian = {a: mpmath.mpf(a) / (2 * z_same_noise**2) for a in range(2, ORDERS[-1] + 1)}
        ratios.append(ours / _epsilon(gaussian, q=q, steps=steps, delta=delta))
    assert all(r >= 1 - 1e-9 for r in ratios)  # never better than the Gaussian with the same noise
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(ratios))  # closer with every bit
    assert ratios[0] > 2  # at 10 bits rounding eats 94% of the clip norm
    assert ratios[-1] == pytest.approx(1.0, abs=1e-6)
    if q < 1:  # the general subsampling bound costs a little over Opacus' exact one for the Gaussian
        tight = compute_epsilon(
            [SampledGaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps, scope="user")], delta=delta
        )
        wide = _server(40).distributed
        assert wide is not None
        limit = compute_epsilon([dataclasses.replace(wide.event(steps=steps), sample_rate=q)], delta=delta)
        assert tight < limit < 1.6 * tight


def test_skellam_tends_to_the_gaussian_as_its_variance_grows() -> None:
    for d2 in (10.0, 1e3, 1e6):
        event = DistributedNoiseEvent(
            mechanism="skellam", noise_multiplier=1.0, sample_rate=1.0, steps=10, shares=4, l2_sensitivity=d2, dim=512
        )
        gaussian = {a: mpmath.mpf(a) / 2 for a in range(2, ORDERS[-1] + 1)}
        limit = _epsilon(gaussian, q=1.0, steps=10, delta=1e-5)
        gap = compute_epsilon([event], delta=1e-5) / limit - 1
        assert gap >= 0
    assert gap < 1e-5
